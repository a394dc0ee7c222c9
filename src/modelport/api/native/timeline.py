"""``GET /api/v1/timeline``: one model's or endpoint's last hour of traffic on this server, in 10-second
buckets (requests/s, tokens/s, time to first token and latency percentiles), as the console charts it.

A caller reads the names of its own account (``<account>/<name>``); an administrator any. Another
account's name reads as not found, like its models.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from modelport.accounts.service import Principal
from modelport.api.deps import PrincipalDep, get_services
from modelport.errors import NotFound
from modelport.serving.timeline import KEEP_S

router = APIRouter()


def timeline_of(request: Request, who: Principal, model: str, minutes: int) -> dict[str, Any]:
    """The series, for the API and the console alike."""
    if model.partition("/")[0] != who.account_name and not who.is_admin:
        raise NotFound(f"no model or endpoint named {model!r}", param="model")
    return get_services(request).live.timeline.series(model, minutes * 60)


@router.get("/timeline")
def get_timeline(
    request: Request,
    who: PrincipalDep,
    model: str = Query(description="A model, adapter or endpoint name, <account>/<name>"),
    minutes: int = Query(default=60, ge=1, le=KEEP_S // 60, description="How far back"),
) -> dict[str, Any]:
    return timeline_of(request, who, model, minutes)
