"""``modelport models …`` and ``modelport jobs …``."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

from modelport.cli.base import AppContext, connection_options, pass_app
from modelport.cli.client import Client
from modelport.cli.output import Output, human_bytes, human_count, when
from modelport.cli.pack import pack_directory
from modelport.cli.progress import describe_progress, watch_job
from modelport.cli.upload import upload_file


@click.group()
def models() -> None:
    """Upload, list, inspect and delete models and adapters."""


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
@click.option("--wait/--no-wait", default=False, help="Show progress until the job is Complete or Failed.")
@connection_options
@pass_app
def models_upload(app: AppContext, /, wait: bool, model_source: str, **fields: Any) -> None:
    """Upload a model or adapter and print its job id.

    Local folders are packed as a tar and sent through the resumable upload API: run the same command
    again after an interruption and only the missing parts are sent.
    """
    out, client = app.output, app.client()
    source = _local_source(client, Path(model_source), out) if Path(model_source).exists() else model_source
    created = client.create_model(model_source=source, **fields)["data"]
    job_id = created["job_id"]
    out.message(f"{created['model_name']}: job {job_id} created")
    if not app.json:
        out.line(job_id)  # first, so a script has the id even when the job then fails
    job = watch_job(client, job_id, out) if wait else None
    if app.json:
        out.json({**created, "job": job} if job else created)
    if job:
        out.success(f"{created['model_name']} is ready: try `modelport chat {created['model_name']}`")


def _local_source(client: Client, path: Path, out: Output) -> str:
    """Pack a folder (or take an archive as is), upload it with a progress bar; returns the file id."""
    with tempfile.TemporaryDirectory(prefix="modelport-pack-") as tmp:
        if path.is_dir():
            out.message(f"packing {path}")
            archive = pack_directory(path, Path(tmp) / f"{path.name}.tar")
        else:
            archive = path
        size = archive.stat().st_size
        columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
        bar = Progress("{task.description}", *columns, console=out.err, transient=True)
        with bar:
            task = bar.add_task(f"uploading {archive.name}", total=size)
            file_id = upload_file(client, archive, lambda n: bar.advance(task, n))
    out.message(f"uploaded {path} ({human_bytes(size)}) as {file_id}")
    return file_id


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
    manifest = m.get("manifest") or {}
    adapter = manifest.get("adapter") or {}
    out.fields(
        [
            ("name", m["id"]),
            ("id", m.get("model_id")),
            ("kind", m.get("kind")),
            ("type", m.get("type")),
            ("base model", m.get("base_model")),
            ("architecture", manifest.get("architecture")),
            ("model type", manifest.get("model_type")),
            ("parameters", human_count(manifest.get("parameters"))),
            ("dtype", manifest.get("dtype")),
            ("context length", manifest.get("context_length")),
            ("adapter rank", adapter.get("rank")),
            ("adapter alpha", adapter.get("alpha")),
            ("target modules", adapter.get("target_modules")),
            ("description", m.get("description")),
            ("created", when(m.get("created"))),
        ]
    )
    files = manifest.get("files") or []
    out.table(("FILE", "SIZE", "SHA256"), [(f["path"], human_bytes(f["size"]), f["sha256"][:16]) for f in files], "")


@models.command("delete")
@click.argument("model")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@connection_options
@pass_app
def models_delete(app: AppContext, model: str, yes: bool) -> None:
    """Delete a model or adapter (refused while endpoints serve it)."""
    if not yes and sys.stdin.isatty():
        click.confirm(f"Delete {model}? Its files are removed", abort=True, err=True)
    result = app.client().delete_model(model)
    app.output.json(result) if app.json else app.output.success(f"deleted {result['id']}")


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
            describe_progress(j.get("progress")) or "-",
            when(j["updated_at"]),
        )
        for j in items
    ]
    app.output.table(("JOB", "MODEL", "STATUS", "PROGRESS", "UPDATED"), rows, empty="No jobs.")


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
            ("error", error.get("code")),
            ("created", when(job["created_at"])),
            ("updated", when(job["updated_at"])),
        ]
    )
    rows = [(when(u["timestamp"]), u["status"], u["message"]) for u in job["status_updates"]]
    out.table(("TIME", "STATUS", "MESSAGE"), rows, empty="")


@jobs.command("watch")
@click.argument("job_id")
@connection_options
@pass_app
def jobs_watch(app: AppContext, job_id: str) -> None:
    """Follow a job's progress until it is Complete (exit 0) or Failed (exit 5)."""
    job = watch_job(app.client(), job_id, app.output)
    app.output.json(job) if app.json else app.output.success(f"job {job_id}: Complete")
