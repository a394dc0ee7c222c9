"""``modelport usage``: requests and tokens per account, model and day, through ``GET /api/v1/usage``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from modelport.cli.base import AppContext, connection_options, pass_app

COLUMNS = ("DATE", "ACCOUNT", "MODEL", "REQUESTS", "PROMPT TOKENS", "COMPLETION TOKENS", "TOTAL TOKENS")
COUNTED = ("requests", "prompt_tokens", "completion_tokens", "total_tokens")


@click.command()
@click.option("--since", default=None, metavar="YYYY-MM-DD", help="First day (UTC), inclusive.")
@click.option("--until", default=None, metavar="YYYY-MM-DD", help="Last day (UTC), inclusive.")
@click.option("--model", default=None, help="Only this model (its full name, account/name).")
@click.option("--account", default=None, help="Only this account (administrators see every account).")
@connection_options
@pass_app
def usage(app: AppContext, since: str | None, until: str | None, model: str | None, account: str | None) -> None:
    """Show requests and tokens per day (UTC), account and model, with a total.

    An account sees its own usage; the administrator every account's. The server counts as requests
    finish and writes its counts every few seconds (MODELPORT_USAGE_FLUSH_INTERVAL_S).
    """
    rows = app.client().usage(since=since, until=until, model=model, account=account)
    if app.json:
        return app.output.json(rows)
    app.output.table(COLUMNS, table_rows(rows), empty="No usage in this period.")


def table_rows(rows: Sequence[dict[str, Any]]) -> list[tuple[str, ...]]:
    """A line per row, then a totals line (none for no rows)."""
    if not rows:
        return []
    lines = [(r["date"], r["account"], r["model"], *(f"{r[k]:,}" for k in COUNTED)) for r in rows]
    totals = (f"{sum(r[k] for r in rows):,}" for k in COUNTED)
    return [*lines, ("total", "", "", *totals)]
