"""tools: the `eventqueue` command and what it runs (demo, bench, listen, inspection)."""
