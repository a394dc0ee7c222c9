"""The ``modelport`` command: run the server or a worker, manage API keys."""

from __future__ import annotations

import logging
import secrets
import signal
import threading
from pathlib import Path
from typing import Any

import click

from modelport import __version__
from modelport.accounts.service import KEY_PREFIX, AccountService
from modelport.redact import RedactingFilter
from modelport.settings import Settings


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


@click.group()
@click.version_option(__version__, prog_name="modelport")
def cli() -> None:
    """modelport: upload your own models and adapters and serve them behind an OpenAI-compatible API.

    Configuration comes from MODELPORT_* environment variables (see docs/configuration.md).
    """


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
@click.option("--workers", type=int, default=None, help="Ingest worker threads (default: MODELPORT_WORKERS).")
@click.option("--log-level", default="info", show_default=True, help="debug, info, warning or error.")
def serve(host: str, port: int, workers: int | None, log_level: str) -> None:
    """Start the API server: uploads with ingest workers inside it, and inference on the embedded engine.

    Models load on their first request (MODELPORT_ENGINE_DEVICE, MODELPORT_MAX_NUM_SEQS, MODELPORT_MAX_LORAS
    and the other engine settings are in docs/configuration.md).
    """
    import uvicorn

    from modelport.app import create_app

    _setup_logging(log_level)
    settings = Settings() if workers is None else Settings(workers=workers)
    app = create_app(settings)
    _first_start_key(app.state.accounts, settings)
    click.echo(f"modelport {__version__} on http://{host}:{port} (data: {settings.data_dir})", err=True)
    uvicorn.run(app, host=host, port=port, log_config=None, log_level=log_level.lower())


@cli.command(hidden=True)
@click.option("--spec", "spec_path", required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--port", required=True, type=int)
def replica(spec_path: Path, port: int) -> None:
    """Internal: one endpoint replica, started by the server's endpoint supervisor."""
    from modelport.endpoints.replica import run

    _setup_logging("warning")
    run(spec_path, port)


def _first_start_key(accounts: AccountService, settings: Settings) -> None:
    """On a brand-new install, make an admin key so the user can start at once.

    The key goes to a 0600 file, never to the log; the terminal is told where it is.
    """
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    if not accounts.bootstrap(settings.bootstrap_account, key):
        return
    path = settings.data_dir / "admin-api-key"
    path.touch(mode=0o600)
    path.write_text(key + "\n")
    click.echo(
        f"First start: created account {settings.bootstrap_account!r}; its API key is in {path}\n"
        f"  export TOGETHER_API_KEY=$(cat {path}) TOGETHER_BASE_URL=http://127.0.0.1:8000/v1",
        err=True,
    )


@cli.command()
@click.option("--threads", default=2, show_default=True, type=int, help="Jobs to run at once.")
@click.option("--log-level", default="info", show_default=True)
def worker(threads: int, log_level: str) -> None:
    """Run ingest workers in their own process, sharing the server's database and blob store."""
    from modelport.app import build_services
    from modelport.jobs.worker import WorkerPool

    _setup_logging(log_level)
    settings = Settings(workers=threads)
    services = build_services(settings)
    pool = WorkerPool(settings, services.db, services.blobs)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    pool.start()
    click.echo(f"modelport worker: {threads} threads on {settings.database_url.split('@')[-1]}", err=True)
    stop.wait()
    pool.stop()


@cli.group()
def models() -> None:
    """Models through the HTTP API (MODELPORT_BASE_URL, MODELPORT_API_KEY)."""


@models.command("upload")
@click.option("--model-name", required=True, help="Name for the model, e.g. my-model (namespaced to your account).")
@click.option(
    "--model-source",
    required=True,
    help="A local model folder or archive (.tar, .tar.gz, .zip), a Hugging Face repo, or an https:// archive URL.",
)
@click.option("--model-type", type=click.Choice(["model", "adapter"]), default="model", show_default=True)
@click.option("--base-model", default=None, help="For adapters: the base model (one of yours).")
@click.option("--hf-token", default=None, envvar="HF_TOKEN", help="For private Hugging Face repos.")
@click.option("--description", default=None)
@click.option("--wait/--no-wait", default=False, help="Wait until the upload job is Complete or Failed.")
@click.option("--base-url", envvar="MODELPORT_BASE_URL", default="http://127.0.0.1:8000", show_default=True)
@click.option("--api-key", envvar="MODELPORT_API_KEY", required=True, help="Or set MODELPORT_API_KEY.")
def models_upload(
    model_name: str,
    model_source: str,
    model_type: str,
    base_model: str | None,
    hf_token: str | None,
    description: str | None,
    wait: bool,
    base_url: str,
    api_key: str,
) -> None:
    """Upload a model or adapter. Local folders are packed and sent through the resumable upload API
    (an interrupted upload resumes when the same command runs again); the job id is printed."""
    from modelport.cli.client import ApiError, Client

    client = Client(base_url, api_key)
    try:
        source = _local_source(client, Path(model_source)) if Path(model_source).exists() else model_source
        created = client.create_model(
            model_name=model_name,
            model_source=source,
            model_type=model_type,
            base_model=base_model,
            hf_token=hf_token,
            description=description,
        )
        job_id = created["data"]["job_id"]
        click.echo(f"{created['data']['model_name']}: job {job_id}", err=True)
        click.echo(job_id)
        if wait:
            _wait_job(client, job_id)
    except ApiError as e:
        raise click.ClickException(f"{e.message} (HTTP {e.status})") from None


def _local_source(client: Any, path: Path) -> str:
    """Pack a folder (or take an archive as is), upload it with a progress bar; returns the file id."""
    import tempfile

    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from modelport.cli.pack import pack_directory

    with tempfile.TemporaryDirectory(prefix="modelport-pack-") as tmp:
        archive = pack_directory(path, Path(tmp) / f"{path.name}.tar") if path.is_dir() else path
        columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn())
        with Progress("[progress.description]{task.description}", *columns, transient=True) as bar:
            task = bar.add_task(f"uploading {archive.name}", total=archive.stat().st_size)
            file_id: str = client.upload_file(archive, lambda n: bar.advance(task, n))
    click.echo(f"uploaded {path} as {file_id}", err=True)
    return file_id


def _wait_job(client: Any, job_id: str) -> None:
    import time

    while (job := client.job(job_id))["status"] not in ("Complete", "Failed"):
        time.sleep(1)
    if job["status"] == "Failed":
        raise click.ClickException(f"job {job_id} failed: {job['status_updates'][-1]['message']}")
    click.echo(f"job {job_id}: Complete", err=True)


@cli.group()
def keys() -> None:
    """Manage API keys (talks to the database directly: run it where the server runs)."""


@keys.command("create")
@click.option("--account", required=True, help="Account name; created if it does not exist.")
def keys_create(account: str) -> None:
    """Create an API key and print it. It is shown only this once."""
    from modelport.app import build_services

    key = build_services(Settings()).accounts.create_key(account)
    click.echo(key)
    click.echo(f"Created a key for account {account!r}. Store it now: it cannot be shown again.", err=True)


@keys.command("list")
@click.option("--account", default=None, help="Only this account's keys.")
def keys_list(account: str | None) -> None:
    """List API keys (ids and hints only; keys themselves are never stored)."""
    from modelport.app import build_services

    for k in build_services(Settings()).accounts.list_keys(account):
        click.echo(f"{k.id}\t{k.account_name}\t{k.hint}\t{'revoked' if k.revoked else 'active'}")


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke an API key by its id (from `modelport keys list`)."""
    from modelport.app import build_services

    build_services(Settings()).accounts.revoke_key(key_id)
    click.echo(f"Revoked {key_id}.", err=True)


if __name__ == "__main__":  # `python -m modelport.cli.main`, how the supervisor starts replicas
    cli()
