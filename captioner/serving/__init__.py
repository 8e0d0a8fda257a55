"""`captioner serve`: the Starlette app, request batching and its page."""
