"""``modelport models …`` and ``modelport jobs …``."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

from modelport.cli import download
from modelport.cli.base import AppContext, connection_options, pass_app
from modelport.cli.client import ApiError, Client, ClientError, NotFoundError
from modelport.cli.errors import CliFailure, Explained, explain, in_flags
from modelport.cli.flags import API_FLAGS
from modelport.cli.localsource import LocalSource, inspect_local, local_path
from modelport.cli.nextstep import next_step
from modelport.cli.output import Output, human_bytes, human_count, when
from modelport.cli.pack import pack
from modelport.cli.progress import describe_progress, job_detail, watch_job
from modelport.cli.upload import upload_file
from modelport.manifest import Manifest, ModelKind
from modelport.tool_formats import FORMATS

# Above this, `models upload` asks before sending (on a terminal, without --yes).
CONFIRM_ABOVE_BYTES = 2 * 2**30
# Where an upload's next step differs from the table's (cli/errors.py), keyed by the error's code.
DISK_HINT = "check the folder's permissions and free space, then run the same command again"
UPLOAD_HINTS = {
    "model_type_mismatch": "--model-type adapter is for a LoRA adapter's folder, with --base-model naming "
    "the model it was trained on; a full model's folder is --model-type model",
}


@click.group()
def models() -> None:
    """Upload, list, inspect, download and delete models and adapters."""


@models.command("upload")
@click.option("--model-name", required=True, help="Name for the model, e.g. my-model (namespaced to your account).")
@click.option(
    "--model-source",
    required=True,
    help="A local model folder or archive (.tar, .tar.gz, .zip), a Hugging Face repo (org/name[@revision]), "
    "an https:// archive URL (e.g. S3 presigned), or an uploaded file id (file-…).",
)
@click.option("--model-type", type=click.Choice(["model", "adapter"]), default="model", show_default=True)
@click.option("--base-model", default=None, help="For adapters: the base model it was trained on (one of yours).")
@click.option("--lora-model", default=None, help="For adapters: the adapter's repo, when --model-source is its base.")
@click.option("--hf-token", default=None, envvar="HF_TOKEN", help="For private Hugging Face repos (env HF_TOKEN).")
@click.option("--description", default=None, help="Free text shown with the model.")
@click.option(
    "--tool-call-parser",
    type=click.Choice(FORMATS),
    default=None,
    help="How the model writes tool calls (default: read off its chat template).",
)
@click.option("--wait/--no-wait", default=False, help="Show progress until the job is Complete or Failed.")
@click.option(
    "--new-revision",
    is_flag=True,
    help="Add a revision to the existing model --model-name instead of creating a model; it serves once "
    "ready (the previous revision serves until then, and stays if the new one fails).",
)
@click.option(
    "--yes", "-y", is_flag=True, help=f"Do not ask before sending more than {human_bytes(CONFIRM_ABOVE_BYTES)}."
)
@connection_options
@pass_app
def models_upload(
    app: AppContext, /, wait: bool, yes: bool, new_revision: bool, model_source: str, **fields: Any
) -> None:
    """Upload a model or adapter and print its job id.

    A local folder must be the model's own: only the files the server keeps (configs, safetensors
    weights, tokenizer) are packed as a tar and sent through the resumable upload API; run the same
    command again after an interruption and only the missing parts are sent. Before any byte moves, the
    server checks the name, the type and the base model. With --wait, the uploaded archive is removed
    from the server once the job has ended.
    """
    path = local_path(model_source)  # every local refusal comes before the server is asked anything
    local = inspect_local(path, model_source, fields["model_type"]) if path else None
    out, client = app.output, app.client()
    if new_revision:
        client.list_revisions(fields["model_name"])  # a missing model is said before any byte moves
    else:
        _preflight(client, fields, None if local else model_source, local)
    upload_id = _local_source(client, local, out, yes) if local else None
    created = _submit(client, upload_id or model_source, fields, upload_id, new_revision)
    job_id = created["job_id"]
    out.message(f"{created['model_name']}: job {job_id} created")
    if not app.json:
        out.line(job_id)  # first, so a script has the id even when the job then fails
    job = _watch(client, job_id, out, upload_id) if wait else None
    if upload_id and not wait:
        out.message(f"once the job has ended, `modelport uploads delete {upload_id}` removes the uploaded archive")
    if app.json:
        out.json({**created, "job": job} if job else created)
    if job:
        # The next command depends on what the model turned out to be (chat, language, embedding).
        out.success(f"{created['model_name']} is ready: try {next_step(client.get_model(created['model_name']))}")


def _local_source(client: Client, local: LocalSource, out: Output, yes: bool) -> str:
    """Say what will be sent, ask first when it is big, pack a folder (an archive goes as it is), upload it
    with a progress bar; returns the file id."""
    for line in local.summary():
        out.message(line)
    # Scripts (no terminal) are not asked: they named the source on purpose, and the refusals above
    # already stop the folders that are never a model.
    if local.size > CONFIRM_ABOVE_BYTES and not yes and _on_terminal():
        click.confirm(f"Send {human_bytes(local.size)} to {client.base_url}?", abort=True, err=True)
    with tempfile.TemporaryDirectory(prefix="modelport-pack-") as tmp:
        archive = local.path
        if local.selection is not None:
            archive = pack(local.selection.files, Path(tmp) / f"{local.path.resolve().name}.tar")
        size = archive.stat().st_size
        with _transfer_bar(out) as bar:
            task = bar.add_task(f"uploading {archive.name}", total=size)
            file_id = upload_file(client, archive, lambda n: bar.advance(task, n))
    out.message(f"uploaded {local.shown} ({human_bytes(size)}) as {file_id}")
    return file_id


def _transfer_bar(out: Output) -> Progress:
    columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    return Progress("{task.description}", *columns, console=out.err, transient=True)


def _on_terminal() -> bool:
    return sys.stdin.isatty()


def _preflight(client: Client, fields: dict[str, Any], remote: str | None, local: LocalSource | None) -> None:
    files = local.selection.names if local and local.selection else None
    try:
        client.preflight(
            model_name=fields["model_name"],
            model_type=fields["model_type"],
            base_model=fields["base_model"],
            model_source=remote,
            files=files,
        )
    except ApiError as e:
        if e.status in (404, 405) and e.code in (None, "not_found", "method_not_allowed") and e.param is None:
            return  # a server from before preflight: its job makes the same checks, after the upload
        raise _in_cli_terms(e) from e


def _submit(
    client: Client, source: str, fields: dict[str, Any], upload_id: str | None, new_revision: bool
) -> dict[str, Any]:
    try:
        if new_revision:
            return client.add_revision(fields["model_name"], source, fields["hf_token"])
        created: dict[str, Any] = client.create_model(model_source=source, **fields)["data"]
        return created
    except ClientError as e:
        raise _naming_upload(_in_cli_terms(e), _forget_upload(client, upload_id)) from e


def _watch(client: Client, job_id: str, out: Output, upload_id: str | None) -> dict[str, Any]:
    """Watch the job; once it has ended (not on Ctrl-C: it goes on), remove the upload it read."""
    try:
        job = watch_job(client, job_id, out)
    except CliFailure as failure:
        if failure.exit_code == 5:  # the job Failed
            raise _naming_upload(failure, _forget_upload(client, upload_id)) from None
        raise
    if left := _forget_upload(client, upload_id):
        out.message(left)
    return job


def _forget_upload(client: Client, upload_id: str | None) -> str | None:
    """Delete the upload this command made; what to tell the user when it stays on the server."""
    if upload_id is None:
        return None
    try:
        client.delete_upload(upload_id)
    except NotFoundError:
        pass
    except ClientError:
        return f"the upload {upload_id} is still on the server: `modelport uploads delete {upload_id}` removes it"
    return None


def _naming_upload(failure: CliFailure, left: str | None) -> CliFailure:
    if left is None:
        return failure
    return CliFailure(
        failure.message, hint=f"{failure.hint}; {left}" if failure.hint else left, exit_code=failure.exit_code
    )


def _in_cli_terms(exc: ClientError) -> CliFailure:
    """The table's explanation (message in flag terms, exit code), naming the flag at fault, with the
    next step for an upload where it differs from the table's."""
    why = explain(exc) or Explained(str(exc), None, 1)
    message, hint = why.message, why.hint
    if isinstance(exc, ApiError):
        flag = API_FLAGS.get(exc.param or "")
        message = f"{flag}: {message}" if flag and flag not in message else message
        hint = UPLOAD_HINTS.get(exc.code or "", hint)
    return CliFailure(message, hint=hint, exit_code=why.exit_code)


@models.command("list")
@connection_options
@pass_app
def models_list(app: AppContext) -> None:
    """List your models and adapters."""
    items = app.client().list_models()
    out = app.output
    if app.json:
        return out.json(items)
    rows = [
        (
            m["id"],
            m.get("kind"),
            m.get("type"),
            m.get("base_model"),
            human_bytes(m.get("bytes")),
            m.get("context_length"),
            when(m.get("created")),
        )
        for m in items
    ]
    cols = ("NAME", "KIND", "TYPE", "BASE MODEL", "SIZE", "CONTEXT", "CREATED")
    out.table(cols, rows, empty="No models yet: `modelport models upload --help` shows how to add one.")


@models.command("get")
@click.argument("model")
@connection_options
@pass_app
def models_get(app: AppContext, model: str) -> None:
    """Show a model: its manifest, files, and for adapters rank and target modules."""
    m = app.client().get_model(model)
    out = app.output
    if app.json:
        return out.json(m)
    manifest = _manifest(m)
    adapter = manifest.adapter
    out.fields(
        [
            ("name", m["id"]),
            ("id", m.get("model_id")),
            ("revision", m.get("revision_id")),
            ("kind", m.get("kind")),
            ("type", m.get("type")),
            ("base model", m.get("base_model")),
            ("architecture", manifest.architecture),
            ("model type", manifest.model_type),
            ("parameters", human_count(manifest.parameters)),
            ("dtype", manifest.dtype),
            ("context length", manifest.context_length),
            ("adapter rank", adapter.rank if adapter else None),
            ("adapter alpha", adapter.alpha if adapter else None),
            ("target modules", adapter.target_modules if adapter else None),
            ("description", m.get("description")),
            ("created", when(m.get("created"))),
            ("try", next_step(m).strip("`")),
        ]
    )
    files = [(f.path, human_bytes(f.size), f.sha256[:16]) for f in manifest.files]
    out.table(("FILE", "SIZE", "SHA256"), files, "")


@models.command("revisions")
@click.argument("model")
@connection_options
@pass_app
def models_revisions(app: AppContext, model: str) -> None:
    """List a model's revisions, oldest first: the head (*) serves unless a request names another
    (MODEL@N). `modelport models upload --new-revision` adds one; `modelport models delete MODEL@N`
    deletes one."""
    listed = app.client().list_revisions(model)
    out = app.output
    if app.json:
        return out.json(listed)
    rows = [
        (
            f"{r['number']}{' *' if r['head'] else ''}",
            r["id"],
            r["status"],
            human_bytes(r.get("bytes")),
            r.get("source"),
            r.get("created_at"),
            "; ".join(r.get("problems") or []) or None,
        )
        for r in listed["data"]
    ]
    cols = ("REV", "ID", "STATUS", "SIZE", "SOURCE", "CREATED", "PROBLEMS")
    out.table(cols, rows, empty=f"{listed['model']} has no revisions yet: upload one with --new-revision.")


def _manifest(model: dict[str, Any]) -> Manifest:
    """The manifest in ``GET /v1/models/{id}``'s JSON; an empty one while the model has none (``{}``)."""
    match model:
        case {"manifest": {"kind": str()} as raw}:
            return Manifest.from_json(raw)
        case _:
            return Manifest(kind=ModelKind.ADAPTER if model.get("kind") == ModelKind.ADAPTER else ModelKind.MODEL)


@models.command("delete")
@click.argument("model")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@connection_options
@pass_app
def models_delete(app: AppContext, model: str, yes: bool) -> None:
    """Delete a model or adapter (refused while endpoints serve it), or one revision of it (MODEL@N:
    refused while an endpoint pins it, or when it is the last ready one). Asks first, unless --yes."""
    if not yes and not sys.stdin.isatty():
        raise CliFailure(
            f"not deleting {model}: there is no terminal to ask for confirmation",
            hint=f"pass --yes to delete without asking: `modelport models delete {model} --yes`",
            exit_code=2,
        )
    if not yes:
        click.confirm(f"Delete {model}? Its files are removed", abort=True, err=True)
    result = app.client().delete_model(model)
    app.output.json(result) if app.json else app.output.success(f"deleted {result['id']}")


@models.command("download")
@click.argument("model")
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--revision", metavar="REV", default=None, help="The revision, by number or id (as MODEL@REV); default the head."
)
@click.option(
    "--files", metavar="PATHS", default=None, help="Only these files, comma-separated, e.g. config.json,tokenizer.json."
)
@connection_options
@pass_app
def models_download(app: AppContext, model: str, directory: Path, revision: str | None, files: str | None) -> None:
    """Download a model's files (its head revision, or MODEL@REV) into DIR.

    Each file is written under a temporary name in DIR and renamed into place once its size and hash
    match; a file already there with the same size and hash is skipped, so the same command run again
    after an interruption fetches only what is missing. --json prints {revisionId, path, files, bytes,
    skipped}: files and bytes count what was downloaded, skipped the files already there.
    """
    if revision and "@" in model:
        raise click.UsageError(f"name the revision once: {model} or --revision {revision}")
    paths = [p.strip() for p in (files or "").split(",") if p.strip()]
    out, client = app.output, app.client()
    plan = download.fetch_plan(client, model, paths, revision)
    placed = download.place(plan, directory)  # refuses before anything is written
    try:
        todo = _download_all(out, directory, placed)
    except OSError as e:
        raise CliFailure(f"cannot write {e.filename or directory}: {e.strerror or e}", hint=DISK_HINT) from e
    got, skipped = sum(p.file.size for p in todo), len(plan.files) - len(todo)
    if app.json:
        where = str(directory.resolve())
        return out.json(
            {"revisionId": plan.revision_id, "path": where, "files": len(todo), "bytes": got, "skipped": skipped}
        )
    out.success(
        f"{model}: revision {plan.revision_id} in {directory}: downloaded {_files(len(todo))} ({human_bytes(got)}), "
        f"skipped {skipped} already there"
    )


def _files(n: int) -> str:
    return f"{n} file" if n == 1 else f"{n} files"


def _download_all(out: Output, directory: Path, placed: list[download.Placed]) -> list[download.Placed]:
    """Download the files not already there, with a progress bar; returns those downloaded."""
    directory.mkdir(parents=True, exist_ok=True)
    todo = []
    for p in placed:
        if download.is_current(p):
            out.message(f"{p.file.path}: already here (same size and hash), skipped")
        else:
            todo.append(p)
    if not todo:
        return todo
    with _transfer_bar(out) as bar, download.signed_url_client() as http:
        task = bar.add_task("downloading", total=sum(p.file.size for p in todo))
        for p in todo:
            bar.update(task, description=f"downloading {p.file.path}")
            download.fetch(http, p, lambda n: bar.advance(task, n))
    return todo


@click.group()
def jobs() -> None:
    """Upload jobs: list them, inspect one, or watch one until it ends."""


@jobs.command("list")
@click.option("--status", type=click.Choice(["Queued", "Running", "Complete", "Failed"]), default=None)
@connection_options
@pass_app
def jobs_list(app: AppContext, status: str | None) -> None:
    """List your jobs, newest first."""
    items = app.client().list_jobs(status)
    if app.json:
        return app.output.json(items)
    rows = [
        (
            j["job_id"],
            j["args"].get("modelName"),
            j["status"],
            job_detail(j),
            when(j["updated_at"]),
        )
        for j in items
    ]
    app.output.table(("JOB", "MODEL", "STATUS", "PROGRESS / ERROR", "UPDATED"), rows, empty="No jobs.")


@jobs.command("get")
@click.argument("job_id")
@connection_options
@pass_app
def jobs_get(app: AppContext, job_id: str) -> None:
    """Show a job with every status update (all the problems, when it failed)."""
    job = app.client().job(job_id)
    out = app.output
    if app.json:
        return out.json(job)
    error = job.get("error") or {}
    out.fields(
        [
            ("job", job["job_id"]),
            ("model", job["args"].get("modelName")),
            ("status", job["status"]),
            ("progress", describe_progress(job.get("progress"))),
            ("error", f"{error['code']}: {in_flags(str(error.get('message')))}" if error else None),
            ("created", when(job["created_at"])),
            ("updated", when(job["updated_at"])),
        ]
    )
    rows = [(when(u["timestamp"]), u["status"], in_flags(u["message"])) for u in job["status_updates"]]
    out.table(("TIME", "STATUS", "MESSAGE"), rows, empty="")


@jobs.command("watch")
@click.argument("job_id")
@connection_options
@pass_app
def jobs_watch(app: AppContext, job_id: str) -> None:
    """Follow a job's progress until it is Complete (exit 0) or Failed (exit 5)."""
    client = app.client()
    job = watch_job(client, job_id, app.output)
    if app.json:
        return app.output.json(job)
    try:
        model = client.get_model(job["args"]["modelName"])
    except NotFoundError:  # deleted since
        return app.output.success(f"job {job_id}: Complete")
    app.output.success(f"job {job_id}: Complete; try {next_step(model)}")
