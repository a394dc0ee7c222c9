"""Keep secrets out of text that may be stored, logged or shown."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

_PATTERNS = [
    re.compile(r"(?i)(X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Signature|AWSAccessKeyId)=[^&\s\"']+"),
    re.compile(r"\bhf_[A-Za-z0-9]{8,}\b"),
    re.compile(r"\bmp-[A-Za-z0-9_-]{20,}\b"),
    re.compile(r"(?i)(authorization:\s*bearer\s+)\S+"),
]


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Replace known secret values and anything shaped like one with ``<redacted>``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "<redacted>")
    for pattern in _PATTERNS:
        text = pattern.sub(
            lambda m: (m.group(1) + ("=" if "=" in m.group(0) else "") if m.groups() else "") + "<redacted>",
            text,
        )
    return text


class RedactingFilter(logging.Filter):
    """Installed on modelport's log handlers: a last line of defence if a secret slips into a message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = scrub(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True
