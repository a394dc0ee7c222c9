"""The web console: server-rendered pages over the same services and JSON API as every other client."""
