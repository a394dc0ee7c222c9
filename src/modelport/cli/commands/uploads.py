"""``modelport uploads …``: the archives sent to the server (``models upload`` of a local folder makes one)."""

from __future__ import annotations

import click

from modelport.cli.base import AppContext, connection_options, pass_app
from modelport.cli.client import NotFoundError
from modelport.cli.errors import CliFailure
from modelport.cli.output import human_bytes, when


@click.group()
def uploads() -> None:
    """See and remove uploaded archives (the server also removes them after some days)."""


@uploads.command("list")
@connection_options
@pass_app
def uploads_list(app: AppContext) -> None:
    """List your uploads, with their size and whether every byte has arrived."""
    items = app.client().list_uploads()
    if app.json:
        return app.output.json(items)
    rows = [(u["id"], u["filename"], human_bytes(u["bytes"]), u["status"], when(u["created_at"])) for u in items]
    app.output.table(("ID", "FILENAME", "SIZE", "STATUS", "CREATED"), rows, empty="No uploads.")


@uploads.command("delete")
@click.argument("upload_ids", metavar="ID...", nargs=-1, required=True)
@connection_options
@pass_app
def uploads_delete(app: AppContext, upload_ids: tuple[str, ...]) -> None:
    """Delete uploads by id (file-…); the models made from them stay."""
    client, out = app.client(), app.output
    deleted, missing = [], []
    for upload_id in dict.fromkeys(upload_ids):
        try:
            client.delete_upload(upload_id)
        except NotFoundError:
            missing.append(upload_id)
            continue
        deleted.append(upload_id)
        if not app.json:
            out.success(f"deleted {upload_id}")
    if app.json:
        out.json([{"id": upload_id, "object": "upload", "deleted": True} for upload_id in deleted])
    if missing:
        raise CliFailure(
            f"no such upload: {', '.join(missing)}", hint="`modelport uploads list` shows your uploads", exit_code=4
        )
