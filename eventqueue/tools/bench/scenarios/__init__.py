"""One module per scenario; each returns the JSON rows it measured."""
