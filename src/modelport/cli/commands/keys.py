"""``modelport keys …``: API keys, through ``/api/v1/keys``.

An account manages its own keys; the administrator (the account made on first start) any account's.
"""

from __future__ import annotations

import click

from modelport.cli.base import AppContext, connection_options, pass_app
from modelport.cli.output import when


@click.group()
def keys() -> None:
    """Create, list and revoke API keys."""


@keys.command("create")
@click.option("--name", default=None, help='What to call it, e.g. "laptop" or "ci" (shown by `keys list`).')
@click.option("--account", default=None, help="Account to create it for (administrators; created if new).")
@connection_options
@pass_app
def keys_create(app: AppContext, name: str | None, account: str | None) -> None:
    """Create an API key and print it. It is shown only this once."""
    created = app.client().create_key(account, name)
    if app.json:
        return app.output.json(created)
    app.output.line(created["key"])
    app.output.message(
        f"Created {created['id']} for account {created['account']!r}. Store it now: it cannot be shown again."
    )


@keys.command("list")
@click.option("--account", default=None, help="Only this account's keys (administrators see every account).")
@connection_options
@pass_app
def keys_list(app: AppContext, account: str | None) -> None:
    """List API keys: ids, names and hints only (keys themselves are never stored). LAST USED is
    to the minute."""
    items = app.client().list_keys(account)
    if app.json:
        return app.output.json(items)
    rows = [
        (
            k["id"],
            k["name"] or "-",
            k["account"],
            k["hint"],
            k["status"],
            when(k["created_at"]),
            when(k["last_used_at"]),
        )
        for k in items
    ]
    app.output.table(("ID", "NAME", "ACCOUNT", "HINT", "STATUS", "CREATED", "LAST USED"), rows, empty="No keys.")


@keys.command("revoke")
@click.argument("key_id")
@connection_options
@pass_app
def keys_revoke(app: AppContext, key_id: str) -> None:
    """Revoke an API key by its id (from `modelport keys list`); it stops working at once."""
    app.client().revoke_key(key_id)
    app.output.success(f"revoked {key_id}")
