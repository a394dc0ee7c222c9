"""``modelport endpoints …``: dedicated endpoints and the hardware they run on."""

from __future__ import annotations

from typing import Any

import click

from modelport.cli.base import AppContext, connection_options, pass_app
from modelport.cli.client import Client
from modelport.cli.commands.deployments import endpoints_deploy, endpoints_events, endpoints_show, endpoints_split
from modelport.cli.commands.rollouts import endpoints_rollout
from modelport.cli.errors import CliFailure
from modelport.cli.nextstep import next_step
from modelport.cli.output import Output, human_bytes, when
from modelport.cli.progress import watch_endpoint

GPUS = ("b200", "h200", "h100", "a100", "l40", "l40s", "rtx-6000")
GIB = 2**30  # a configuration's memory is in GiB (endpoints/hardware.py), whatever its wire name says


@click.group()
def endpoints() -> None:
    """Dedicated endpoints: a model on reserved hardware, with its own replicas.

    An endpoint can hold several deployments (each a model revision on its hardware) and split its
    traffic between them: `show`, `deploy`, `split`, `rollout` and `events` work on those.
    """


@endpoints.command("hardware")
@click.option("--model", default=None, help="Say which configurations fit this model and are free now.")
@click.option("--available", is_flag=True, help="Only configurations available now (needs --model).")
@connection_options
@pass_app
def endpoints_hardware(app: AppContext, model: str | None, available: bool) -> None:
    """List this server's hardware configurations (CPU ones, and GPUs when present)."""
    if available and not model:
        raise click.UsageError("--available needs --model")
    items = [h for h in app.client().hardware(model) if not available or _status(h) == "available"]
    if app.json:
        return app.output.json(items)
    rows = [
        (
            h["id"],
            h["specs"]["gpu_type"],
            h["specs"]["gpu_count"],
            human_bytes(h["specs"]["gpu_memory"] * GIB),
            f"{h['pricing']['cents_per_minute']:g}",
            _status(h) or "-",
        )
        for h in items
    ]
    cols = ("ID", "TYPE", "COUNT", "MEMORY", "CENTS/MIN", "AVAILABILITY")
    app.output.table(cols, rows, empty="No hardware configuration matches.")


def _status(h: dict[str, Any]) -> str | None:
    status: str | None = (h.get("availability") or {}).get("status")
    return status


@endpoints.command("create")
@click.option("--model", required=True, help="The model or adapter to serve (one of yours).")
@click.option("--hardware", "hardware_id", default=None, help="A configuration id from `endpoints hardware`.")
@click.option("--gpu", type=click.Choice(GPUS), default=None, help="GPU type, with --gpu-count.")
@click.option("--gpu-count", type=int, default=1, show_default=True, help="GPUs per replica, with --gpu.")
@click.option("--min-replicas", type=int, default=1, show_default=True)
@click.option("--max-replicas", type=int, default=1, show_default=True)
@click.option("--display-name", default=None, help="A label for people; the endpoint's name is derived.")
@click.option("--no-speculative-decoding", is_flag=True, help="Disable speculative decoding.")
@click.option("--no-prompt-cache", is_flag=True, help="Disable the prompt cache.")
@click.option("--inactive-timeout", type=int, default=None, help="Stop after this many idle minutes (0: never).")
@click.option("--wait", is_flag=True, help="Wait until it is STARTED (exit 5 if it ends in ERROR).")
@connection_options
@pass_app
def endpoints_create(app: AppContext, /, **opts: Any) -> None:
    """Create a dedicated endpoint and print its id.

    Without --hardware or --gpu, the first configuration available for the model is used.
    """
    client, out = app.client(), app.output
    hardware = opts["hardware_id"] or _pick_hardware(client, opts["model"], opts["gpu"], opts["gpu_count"])
    endpoint = client.create_endpoint(
        model=opts["model"],
        hardware=hardware,
        autoscaling={"min_replicas": opts["min_replicas"], "max_replicas": opts["max_replicas"]},
        display_name=opts["display_name"],
        disable_speculative_decoding=opts["no_speculative_decoding"],
        disable_prompt_cache=opts["no_prompt_cache"],
        inactive_timeout=opts["inactive_timeout"],
    )
    out.message(f"created {endpoint['name']} on {hardware} ({endpoint['state']})")
    if opts["wait"]:
        endpoint = watch_endpoint(client, endpoint["id"], out)
    _show_created(app, endpoint, out)


def _show_created(app: AppContext, endpoint: dict[str, Any], out: Output) -> None:
    if app.json:
        return out.json(endpoint)
    out.line(endpoint["id"])
    if endpoint["state"] == "STARTED":
        model = app.client().get_model(endpoint["model"])
        out.success(f"call it as model {endpoint['name']!r}: {next_step({**model, 'id': endpoint['name']})}")


def _pick_hardware(client: Client, model: str, gpu: str | None, count: int) -> str:
    """Turn ``--gpu h100 --gpu-count 2`` (or nothing) into one of this server's configuration ids."""
    options = client.hardware(model)
    if gpu:
        wanted = [h for h in options if _gpu_matches(h, gpu) and h["specs"]["gpu_count"] == count]
        if not wanted:
            raise CliFailure(
                f"this server has no {count}x {gpu} configuration",
                hint=f"`modelport endpoints hardware --model {model}` lists what it has; pass one with --hardware",
            )
        return str(wanted[0]["id"])
    for h in options:
        if _status(h) == "available":
            return str(h["id"])
    raise CliFailure(
        f"no hardware configuration is available for {model} now",
        hint=f"`modelport endpoints hardware --model {model}` shows why; stop another endpoint to free room",
    )


def _gpu_matches(h: dict[str, Any], gpu: str) -> bool:
    gpu_type = str(h["specs"]["gpu_type"]).lower()
    return gpu_type == gpu or gpu_type.startswith(gpu + "-")


@endpoints.command("list")
@connection_options
@pass_app
def endpoints_list(app: AppContext) -> None:
    """List your endpoints."""
    items = app.client().list_endpoints()
    if app.json:
        return app.output.json(items)
    show_endpoints(app.output, items)


def show_endpoints(out: Output, items: list[dict[str, Any]]) -> None:
    """The list fits 100 columns: the name is the handle every command takes (ids and creation times are
    in `endpoints get` and --json)."""
    rows = [(e["name"], e.get("display_name"), e["model"], e["hardware"], e["state"], _replicas(e)) for e in items]
    cols = ("NAME", "DISPLAY NAME", "MODEL", "HARDWARE", "STATE", "REPLICAS")
    out.table(cols, rows, empty="No endpoints: `modelport endpoints create --model NAME` makes one.")


def _replicas(e: dict[str, Any]) -> str:
    scaling = e.get("autoscaling") or {}
    low, high = scaling.get("min_replicas"), scaling.get("max_replicas")
    running = (e.get("replicas") or {}).get("running")
    wanted = f"{low}" if low == high else f"{low}-{high}"
    return f"{running}/{wanted}" if running is not None else wanted


@endpoints.command("get")
@click.argument("endpoint")
@connection_options
@pass_app
def endpoints_get(app: AppContext, endpoint: str) -> None:
    """Show an endpoint (by id or name)."""
    e = app.client().get_endpoint(endpoint)
    if app.json:
        return app.output.json(e)
    app.output.fields(
        [
            ("id", e["id"]),
            ("name", e["name"]),
            ("display name", e.get("display_name")),
            ("model", e["model"]),
            ("hardware", e["hardware"]),
            ("state", e["state"]),
            ("replicas", _replicas(e)),
            ("inactive timeout", e.get("inactive_timeout")),
            ("error", e.get("error")),
            ("created", when(e["created_at"])),
        ]
    )


def _state_command(name: str, state: str, verb: str) -> None:
    @endpoints.command(name, help=f"{verb} an endpoint (by id or name).")
    @click.argument("endpoint")
    @click.option("--wait", is_flag=True, help=f"Wait until it is {state}.")
    @connection_options
    @pass_app
    def command(app: AppContext, endpoint: str, wait: bool) -> None:
        client, out = app.client(), app.output
        e = client.update_endpoint(endpoint, state=state)
        if wait:
            e = watch_endpoint(client, e["id"], out, want=state)  # it reports each state itself
        if app.json:
            out.json(e)
        elif not wait:
            out.success(f"{e['name']}: {e['state']}")


_state_command("start", "STARTED", "Start")
_state_command("stop", "STOPPED", "Stop")


@endpoints.command("update")
@click.argument("endpoint")
@click.option("--display-name", default=None)
@click.option("--min-replicas", type=int, default=None)
@click.option("--max-replicas", type=int, default=None)
@click.option("--inactive-timeout", type=int, default=None, help="Idle minutes before it stops (0: never).")
@connection_options
@pass_app
def endpoints_update(app: AppContext, /, endpoint: str, **opts: Any) -> None:
    """Change an endpoint's display name, replica range or idle timeout."""
    client = app.client()
    changes: dict[str, Any] = {k: opts[k] for k in ("display_name", "inactive_timeout") if opts[k] is not None}
    # The server keeps whichever bound is not sent.
    scaling = {k: opts[k] for k in ("min_replicas", "max_replicas") if opts[k] is not None}
    if scaling:
        changes["autoscaling"] = scaling
    if not changes:
        raise click.UsageError("nothing to change: pass --display-name, --min/--max-replicas or --inactive-timeout")
    e = client.update_endpoint(endpoint, **changes)
    app.output.json(e) if app.json else app.output.success(f"updated {e['name']}")


@endpoints.command("delete")
@click.argument("endpoint")
@connection_options
@pass_app
def endpoints_delete(app: AppContext, endpoint: str) -> None:
    """Delete an endpoint: its replicas stop and its hardware is released."""
    app.client().delete_endpoint(endpoint)
    app.output.success(f"deleted {endpoint}")


# Together v2's view of endpoints (deployments, traffic split, rollouts), in their own modules.
for _command in (endpoints_show, endpoints_deploy, endpoints_split, endpoints_rollout, endpoints_events):
    endpoints.add_command(_command)
