"""The SQLite backend: one file in WAL mode, one connection per process, BEGIN IMMEDIATE writes."""
