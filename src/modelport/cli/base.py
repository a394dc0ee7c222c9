"""What every command shares: the connection options, the output, and turning failures into exit codes.

``--base-url``, ``--api-key``, ``--json`` and ``--debug`` work before the command
(``modelport --json models list``) and after it (``modelport models list --json``).
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click

from modelport.cli.client import DEFAULT_BASE_URL, Client
from modelport.cli.errors import CliFailure, Explained, explain
from modelport.cli.output import Output

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class AppContext:
    base_url: str = field(default_factory=lambda: os.environ.get("MODELPORT_BASE_URL") or DEFAULT_BASE_URL)
    api_key: str | None = field(default_factory=lambda: os.environ.get("MODELPORT_API_KEY") or None)
    json: bool = False
    debug: bool = False
    _client: Client | None = None

    @property
    def output(self) -> Output:
        return Output(json_mode=self.json)

    def client(self) -> Client:
        if self._client is None:
            if not self.api_key:
                raise CliFailure(
                    "no API key",
                    hint="pass --api-key or set MODELPORT_API_KEY (a new server writes its first key to "
                    "data/admin-api-key)",
                    exit_code=3,
                )
            self._client = Client(self.base_url, self.api_key)
        return self._client


pass_app = click.make_pass_decorator(AppContext, ensure=True)


def _setter(name: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def store(ctx: click.Context, _: click.Parameter, value: Any) -> None:
        if value not in (None, False):
            setattr(ctx.ensure_object(AppContext), name, value)

    return store


def connection_options(f: F) -> F:
    """The global options, accepted on the group and on each API command."""
    options = [
        click.option(
            "--base-url",
            metavar="URL",
            expose_value=False,
            callback=_setter("base_url"),
            help=f"The server (env MODELPORT_BASE_URL; default {DEFAULT_BASE_URL}).",
        ),
        click.option(
            "--api-key", metavar="KEY", expose_value=False, callback=_setter("api_key"), help="Env MODELPORT_API_KEY."
        ),
        click.option("--json", "json_", is_flag=True, expose_value=False, callback=_setter("json"), help="Print JSON."),
        click.option("--debug", is_flag=True, expose_value=False, callback=_setter("debug"), help="Show tracebacks."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


class ModelportGroup(click.Group):
    """Runs a command and, when it fails, prints the explanation and exits with the code from the table."""

    def invoke(self, ctx: click.Context) -> Any:
        ctx.ensure_object(AppContext)  # before sub-commands' contexts exist, so they share this one
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            Output().message("Interrupted.")
            ctx.exit(130)
        except Exception as e:
            if ctx.ensure_object(AppContext).debug:
                traceback.print_exc()
            why = explain(e) or Explained(f"unexpected {type(e).__name__}: {e}", "run again with --debug", 1)
            Output().error(why.message, why.hint)
            ctx.exit(why.exit_code)
