"""``GET /api/v1/usage``: requests and tokens per account, model and day (UTC), from the usage ledger.

An account sees its own usage; an administrator every account's (``account`` filters by name). A
non-administrator who names another account gets an empty list. What ``modelport usage`` calls.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any

from fastapi import APIRouter, Query

from modelport.api.deps import PrincipalDep, UsageDep
from modelport.errors import InvalidRequest
from modelport.serving.usage import UsageRow

router = APIRouter()

DAY = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)


def usage_json(row: UsageRow) -> dict[str, Any]:
    return {
        "account": row.account,
        "model": row.model,
        "date": row.day.isoformat(),
        "requests": row.requests,
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "total_tokens": row.total_tokens,
    }


def parse_days(since: str | None, until: str | None) -> tuple[date | None, date | None]:
    """Both bounds, or one error naming every one that is wrong (a clause each: ``since: ...; until: ...``)."""
    given = {"since": since, "until": until}
    days = {param: _day(value) for param, value in given.items() if value}
    wrong = [param for param, day in days.items() if day is None]
    if wrong:
        clauses = [f"{param}: {given[param]!r} is not a date (YYYY-MM-DD, UTC)" for param in wrong]
        raise InvalidRequest("; ".join(clauses), param=wrong[0])
    first, last = days.get("since"), days.get("until")
    if first and last and first > last:
        raise InvalidRequest(f"since: {first} is after the until date {last}", param="since")
    return first, last


def _day(value: str) -> date | None:
    if not DAY.fullmatch(value):
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:  # 2024-02-30
        return None


@router.get("/usage")
def list_usage(
    who: PrincipalDep,
    usage: UsageDep,
    since: str | None = Query(default=None, description="First day, YYYY-MM-DD (UTC), inclusive"),
    until: str | None = Query(default=None, description="Last day, YYYY-MM-DD (UTC), inclusive"),
    model: str | None = Query(default=None, description="Only this model (the full name, account/name)"),
    account: str | None = Query(default=None, description="Only this account (administrators)"),
) -> dict[str, Any]:
    """Rows ordered by date, account and model. Blocking (it writes pending counts first): a thread runs it."""
    first, last = parse_days(since, until)
    rows = usage.list(who, first, last, model=model or None, account=account or None)
    return {"object": "list", "data": [usage_json(r) for r in rows]}
