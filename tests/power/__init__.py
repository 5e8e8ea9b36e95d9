"""Power-loss battery: a FUSE filesystem that forgets what was not fsynced, and crash tests on it."""
