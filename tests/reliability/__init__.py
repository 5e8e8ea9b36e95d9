"""The reliability battery: crash, contention, faults, bad input, clocks, storage loss."""
