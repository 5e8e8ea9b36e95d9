"""The dispatcher: a source read into the queue, batches claimed and handed to handlers."""
