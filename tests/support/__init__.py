"""Real components for tests: tiny generated models, a hub-compatible server, an S3 server, live servers."""
