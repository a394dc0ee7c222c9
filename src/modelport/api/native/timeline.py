"""``GET /api/v1/timeline``: one model's or endpoint's last hour of traffic on this server, in 10-second
buckets (requests/s, tokens/s, time to first token and latency percentiles), as the console charts it.

A caller reads the names of its own account (``<account>/<name>``); an administrator any. Another
account's name reads as not found, like its models.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from modelport.api.deps import PrincipalDep, get_services
from modelport.errors import NotFound
from modelport.serving.timeline import KEEP_S

router = APIRouter()


@router.get("/timeline")
def get_timeline(
    request: Request,
    who: PrincipalDep,
    model: str = Query(description="A model, adapter or endpoint name, <account>/<name>"),
    minutes: int = Query(default=60, ge=1, le=KEEP_S // 60, description="How far back"),
) -> dict[str, Any]:
    """The console's endpoint page reads this too, with its session cookie."""
    if model.partition("/")[0] != who.account_name and not who.is_admin:
        raise NotFound(f"no model or endpoint named {model!r}", param="model")
    return get_services(request).live.timeline.series(model, minutes * 60)
