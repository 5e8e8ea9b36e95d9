"""runtime: the queue a listener embeds (EventQueue), its put path, overflow and dispatcher.

It talks to storage only through store.Store (store/base.py), never to a backend module."""
