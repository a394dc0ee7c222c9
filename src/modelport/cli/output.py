"""Everything the CLI prints goes through here: data to stdout, messages to stderr.

With ``--json`` the data is the API's own JSON, pretty-printed, and nothing else reaches stdout;
otherwise it is a table or a list of fields. Colour follows the terminal (and ``NO_COLOR``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from modelport.humanize import human_bytes, human_count, human_sizes

__all__ = ["Output", "cell", "human_bytes", "human_count", "human_sizes", "when"]


def _width(fd: int) -> int | None:
    # Piped output is not a terminal: rich would wrap at 80 columns, which cuts ids and hints in half.
    return None if os.isatty(fd) else int(os.environ.get("COLUMNS", "200"))


@dataclass
class Output:
    json_mode: bool = False
    out: Console = field(default_factory=lambda: Console(width=_width(1), highlight=False))
    err: Console = field(default_factory=lambda: Console(stderr=True, width=_width(2), highlight=False))

    # --- stdout: data ------------------------------------------------------------------------------
    def json(self, value: Any) -> None:
        self.out.file.write(json.dumps(value, indent=2, default=str) + "\n")
        self.out.file.flush()

    def line(self, text: str) -> None:
        """One plain line of data (an id, a key), for ``$(…)`` in shell scripts."""
        self.out.file.write(text + "\n")
        self.out.file.flush()

    def text(self, chunk: str) -> None:
        """Streamed text, written as it comes."""
        self.out.file.write(chunk)
        self.out.file.flush()

    def table(self, columns: Sequence[str], rows: Iterable[Sequence[Any]], empty: str) -> None:
        rows = list(rows)
        if not rows:
            self.message(empty)
            return
        # Two spaces between columns, not three: a wide table (``endpoints list``) fits 100 columns.
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True)
        for name in columns:
            table.add_column(name, no_wrap=name in ("ID", "NAME", "MODEL", "JOB"), overflow="fold")
        for row in rows:
            table.add_row(*(escape(cell(v)) for v in row))
        self.out.print(table)

    def heading(self, text: str) -> None:
        """A section's title in a view of several tables (``endpoints show``)."""
        self.out.print(f"\n[bold]{escape(text)}[/bold]")

    def fields(self, pairs: Iterable[tuple[str, Any]]) -> None:
        pairs = [(k, v) for k, v in pairs if v not in (None, "", [], {})]
        width = max((len(k) for k, _ in pairs), default=0)
        for key, value in pairs:
            self.out.print(f"[bold]{key.ljust(width)}[/bold]  {escape(cell(value))}")

    # --- stderr: messages --------------------------------------------------------------------------
    def message(self, text: str) -> None:
        self.err.print(escape(text))

    def success(self, text: str) -> None:
        self.err.print(f"[green]{escape(text)}[/green]")

    def error(self, text: str, hint: str | None = None) -> None:
        self.err.print(f"[bold red]Error:[/bold red] {escape(text)}")
        if hint:
            self.err.print(f"[dim]Hint:[/dim] {escape(hint)}")


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(cell(v) for v in value)
    return str(value)


def when(value: int | str | None) -> str:
    """A Unix time or ISO-8601 string as local ``YYYY-MM-DD HH:MM:SS``."""
    if value in (None, ""):
        return "-"
    if isinstance(value, int | float):
        moment = datetime.fromtimestamp(value, UTC)
    else:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")
