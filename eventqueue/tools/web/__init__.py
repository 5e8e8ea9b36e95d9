"""`eventqueue web`: the dashboard (app factory, read model, pages, server); public names are
re-exported by `eventqueue.web`."""
