"""modelport: bring your own models and adapters, serve them behind an OpenAI-compatible API."""

__version__ = "0.1.0"
