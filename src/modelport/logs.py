"""How modelport's processes log: one line per record on stderr, secrets redacted.

A leaf module so that the CLI and the engine processes a fork server starts (``serving/forkserver.py``),
which never go through the CLI, set logging up the same way."""

from __future__ import annotations

import logging


def setup(level: str) -> None:
    from modelport.redact import RedactingFilter

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
