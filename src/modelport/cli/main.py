"""The ``modelport`` command: run the server or a worker, and every client command of the HTTP API."""

from __future__ import annotations

import secrets
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import click

from modelport import __version__
from modelport.cli.base import AppContext, ModelportGroup, connection_options, pass_app
from modelport.cli.commands.chat import chat, complete
from modelport.cli.commands.db import db
from modelport.cli.commands.demo import demo
from modelport.cli.commands.embed import embed
from modelport.cli.commands.endpoints import endpoints
from modelport.cli.commands.keys import keys
from modelport.cli.commands.models import jobs, models
from modelport.cli.commands.uploads import uploads
from modelport.cli.commands.usage import usage
from modelport.cli.errors import EXIT_CODES

if TYPE_CHECKING:  # the server's modules load only for `serve` and `worker`: client commands start fast
    from modelport.accounts.service import AccountService
    from modelport.settings import Settings


def _setup_logging(level: str) -> None:
    from modelport.logs import setup

    setup(level)


EPILOG = "\b\nExit codes:\n" + "\n".join(f"  {code:<4} {what}" for code, what in EXIT_CODES.items())


@click.group(cls=ModelportGroup, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="modelport")
@connection_options
def cli() -> None:
    """modelport: upload your own models and adapters and serve them behind an OpenAI-compatible API.

    `serve` and `worker` run the server (configured by MODELPORT_* variables, see docs/configuration.md);
    every other command is a client of its HTTP API (--base-url, --api-key).
    """


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
@click.option("--workers", type=int, default=None, help="Ingest worker threads (default: MODELPORT_WORKERS).")
@click.option("--log-level", default="info", show_default=True, help="debug, info, warning or error.")
def serve(host: str, port: int, workers: int | None, log_level: str) -> None:
    """Start the API server: uploads with ingest workers inside it, and inference in engine processes.

    The server starts MODELPORT_ENGINE_WORKERS engine processes (as it starts when it has models, else
    with the first request that needs one) and restarts any that dies, or uses those listed in
    MODELPORT_ENGINE_SOCKETS (see `modelport engine`). Models load there on their first request
    (MODELPORT_ENGINE_DEVICE, MODELPORT_MAX_NUM_SEQS and the other engine settings are in
    docs/configuration.md).
    """
    import uvicorn

    from modelport.api.slowclients import protocol_with_header_deadline
    from modelport.app import create_app
    from modelport.services import build_services
    from modelport.settings import Settings

    _setup_logging(log_level)
    settings = Settings() if workers is None else Settings(workers=workers)
    services = build_services(settings)
    services.prepare()  # the schema migrated before the first start's key is made; the lifespan starts the rest
    _first_start_key(services.accounts, settings)
    app = create_app(services=services)
    click.echo(f"modelport {__version__} on http://{host}:{port} (data: {settings.data_dir})", err=True)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_config=None,
        log_level=log_level.lower(),
        http=protocol_with_header_deadline(settings.http_header_timeout_s),
        limit_concurrency=settings.http_max_connections,
    )


@cli.command()
@click.option(
    "--socket", "socket_path", required=True, type=click.Path(path_type=Path), help="Unix socket to serve on."
)
@click.option("--spec", "spec_path", type=click.Path(exists=True, path_type=Path), hidden=True)
@click.option("--log-level", default="warning", show_default=True)
def engine(socket_path: Path, spec_path: Path | None, log_level: str) -> None:
    """Run one engine process: the models of serverless requests load and run here.

    `modelport serve` starts its own (MODELPORT_ENGINE_WORKERS). Start them yourself instead, on the same
    host and with the same MODELPORT_DATA_DIR and engine settings, and list their sockets in the server's
    MODELPORT_ENGINE_SOCKETS: the server then routes to them and starts none.
    """
    from modelport.serving.host import run

    _setup_logging(log_level)
    run(spec_path, socket_path)


def _first_start_key(accounts: AccountService, settings: Settings) -> None:
    """On a brand-new install, make an admin key so the user can start at once.

    The key goes to a 0600 file, never to the log; the terminal is told where it is.
    """
    from modelport.accounts.service import KEY_PREFIX

    key = KEY_PREFIX + secrets.token_urlsafe(32)
    if not accounts.bootstrap(settings.bootstrap_account, key):
        return
    path = settings.data_dir / "admin-api-key"
    path.touch(mode=0o600)
    path.write_text(key + "\n")
    click.echo(
        f"First start: created account {settings.bootstrap_account!r}; its API key is in {path}\n"
        f"  export MODELPORT_API_KEY=$(cat {path})",
        err=True,
    )


@cli.command()
@click.option("--threads", default=2, show_default=True, type=int, help="Jobs to run at once.")
@click.option("--log-level", default="info", show_default=True)
def worker(threads: int, log_level: str) -> None:
    """Run ingest workers in their own process, sharing the server's database and blob store."""
    from modelport.services import build_services
    from modelport.settings import Settings

    _setup_logging(log_level)
    settings = Settings(workers=threads)
    services = build_services(settings, serving=False)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    services.start()
    click.echo(f"modelport worker: {threads} threads on {settings.database_url.split('@')[-1]}", err=True)
    stop.wait()
    services.stop()


@cli.command()
@connection_options
@pass_app
def whoami(app: AppContext) -> None:
    """Show which account the API key belongs to."""
    me = app.client().whoami()
    app.output.json(me) if app.json else app.output.line(me["organization"]["name"])


cli.add_command(models)
cli.add_command(jobs)
cli.add_command(uploads)
cli.add_command(endpoints)
cli.add_command(keys)
cli.add_command(usage)
cli.add_command(chat)
cli.add_command(complete)
cli.add_command(embed)
cli.add_command(demo)
cli.add_command(db)


if __name__ == "__main__":  # `python -m modelport.cli.main`, how the server starts its engine processes
    cli()
