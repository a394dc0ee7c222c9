"""Where artifacts come from. ``parse_source`` classifies what a user typed; fetchers download it."""

from modelport.ingest.sources.spec import SourceKind, SourceSpec, parse_source, redact_url

__all__ = ["SourceKind", "SourceSpec", "parse_source", "redact_url"]
