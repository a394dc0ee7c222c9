"""API keys over HTTP: ``/api/v1/keys``. An account manages its own keys; an administrator any account's.

What ``modelport keys`` calls: the CLI never opens the database.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from modelport.accounts.service import KeyInfo
from modelport.api.deps import PrincipalDep, get_accounts

router = APIRouter()


class KeyCreate(BaseModel):
    account: str | None = Field(default=None, description="Account to create the key for (default: the caller's)")
    name: str | None = Field(default=None, description='What to call it ("laptop", "ci"): up to 100 characters')


def key_json(k: KeyInfo) -> dict[str, Any]:
    return {
        "id": k.id,
        "object": "api_key",
        "account": k.account_name,
        "hint": k.hint,
        "name": k.name,
        "status": "revoked" if k.revoked else "active",
        "created_at": int(k.created_at.timestamp()),
        "last_used_at": int(k.last_used_at.timestamp()) if k.last_used_at else None,
    }


@router.get("/keys")
def list_keys(request: Request, who: PrincipalDep, account: str | None = None) -> dict[str, Any]:
    return {"object": "list", "data": [key_json(k) for k in get_accounts(request).list_keys_as(who, account)]}


@router.post("/keys", status_code=201)
def create_key(body: KeyCreate, request: Request, who: PrincipalDep) -> dict[str, Any]:
    """The key itself is in this answer and nowhere else: it is stored only as a hash."""
    info, key = get_accounts(request).create_key_as(who, body.account, body.name)
    return {**key_json(info), "key": key}


@router.delete("/keys/{key_id}", status_code=204)
def revoke_key(key_id: str, request: Request, who: PrincipalDep) -> Response:
    get_accounts(request).revoke_key_as(who, key_id)
    return Response(status_code=204)
