"""Sizes and counts for people, shared by the CLI and the web console."""

from __future__ import annotations

import re

_BYTE_COUNT = re.compile(r"\b(\d+) bytes\b")


def human_bytes(n: int | float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def human_count(n: int | None) -> str:
    if n is None:
        return "-"
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.1f}{suffix}"
    return str(n)


def human_sizes(text: str) -> str:
    """``text`` with each ``N bytes`` written as ``human_bytes(N)``: one unit system for people."""
    return _BYTE_COUNT.sub(lambda m: human_bytes(int(m[1])), text)
