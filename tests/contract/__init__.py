"""The store contract suite: every backend passes the same tests."""
