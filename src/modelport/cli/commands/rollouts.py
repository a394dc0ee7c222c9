"""``modelport endpoints rollout``: move an endpoint's traffic to another deployment in steps, and pause,
resume, promote or cancel the rollout in progress (WIRE-v2 §7)."""

from __future__ import annotations

from typing import Any

import click

from modelport.cli import endpoint_view as view
from modelport.cli.base import AppContext, connection_options, pass_app
from modelport.cli.commands.deployments import Json, deployment_id, resolve
from modelport.cli.errors import CliFailure
from modelport.cli.v2endpoints import EndpointsV2, bare

ACTIONS = ("pause", "resume", "promote", "cancel")
DISPOSITIONS = {"freeze": "CANCEL_DISPOSITION_FREEZE", "revert": "CANCEL_DISPOSITION_REVERT"}
LATENCY_GATE = {"name": "router_latency", "stat": "METRIC_STAT_TYPE_PERCENTILE", "percentile": 95, "window": "60s"}
STRATEGY_OPTIONS = ("ladder", "interval", "blue_green", "rolling", "gate", "source")


@click.command("rollout", short_help="Move traffic to a deployment, step by step.")
@click.argument("endpoint")
@click.argument("target", required=False)
@click.option("--source", default=None, help="Where traffic moves from (default: the other deployment with traffic).")
@click.option(
    "--canary", "ladder", is_flag=False, flag_value="", default=None, metavar="PCTS",
    help="Canary (the default): the target's traffic % at each step, e.g. 10,50,100 (default 5,25,50,100).",
)  # fmt: skip
@click.option("--interval", default=None, help="How long each step runs, e.g. 30s or 5m (default 60s).")
@click.option("--blue-green", is_flag=True, help="Switch all traffic in one step.")
@click.option("--rolling", is_flag=True, help="One step per target replica.")
@click.option(
    "--gate-latency-p95-regression", "gate", type=float, default=None, metavar="PCT",
    help="Canary: pause when the target's p95 latency is PCT % above the source's.",
)  # fmt: skip
@click.option("--pause", "action", flag_value="pause", help="Pause the rollout in progress.")
@click.option("--resume", "action", flag_value="resume", help="Resume it.")
@click.option("--promote", "action", flag_value="promote", help="Finish it now: all traffic to the target.")
@click.option(
    "--cancel", type=click.Choice(tuple(DISPOSITIONS)), is_flag=False, flag_value="freeze", default=None,
    help="Stop it, keeping the split as it is (freeze, the default) or giving the source its traffic back (revert).",
)  # fmt: skip
@click.option("--reason", default=None, help="Why, with --pause or --cancel.")
@connection_options
@pass_app
def endpoints_rollout(app: AppContext, /, endpoint: str, target: str | None, **opts: Any) -> None:
    """Start a rollout of TARGET (a deployment) on an endpoint, or act on the one in progress.

    Traffic moves from the source to TARGET step by step, and the rollout pauses itself when a gate is
    breached. `modelport endpoints show ENDPOINT` shows its progress.
    """
    v2 = EndpointsV2(app.client())
    ep = resolve(v2, endpoint)
    action = _action(opts)
    if action is not None:
        if target or any(opts[k] not in (None, False) for k in STRATEGY_OPTIONS):
            raise click.UsageError(f"--{action} acts on the rollout in progress: give it no TARGET or strategy")
        rollout, what = _act(v2, ep, action, opts), f"{action}d" if action.endswith("e") else f"{action}ed"
    elif target is None:
        raise click.UsageError("name the TARGET deployment, or pass --pause, --resume, --promote or --cancel")
    else:
        created = v2.create_rollout(str(ep["id"]), rollout_body(ep, target, opts))
        rollout, what = v2.act_on_rollout(str(ep["id"]), str(created["id"]), "start", {}), "started"
    if app.json:
        return app.output.json({"rollout": rollout})
    app.output.success(f"{what} rollout {rollout['id']} of {ep['name']}")
    app.output.fields(view.rollout_fields(rollout, view.names_of(ep)))


def _action(opts: dict[str, Any]) -> str | None:
    if opts["cancel"] is not None and opts["action"] is not None:
        raise click.UsageError(f"--{opts['action']} and --cancel: give one")
    return "cancel" if opts["cancel"] is not None else opts["action"]


# --- acting on the rollout in progress -----------------------------------------------------------
def _act(v2: EndpointsV2, endpoint: Json, action: str, opts: dict[str, Any]) -> Json:
    rollout = active_rollout(v2, endpoint)
    body: Json = {"etag": rollout["etag"]}
    if action in ("pause", "cancel"):
        body["reason"] = opts["reason"] or f"asked with modelport endpoints rollout --{action}"
    if action == "cancel":
        body["disposition"] = DISPOSITIONS[opts["cancel"]]
    return v2.act_on_rollout(str(endpoint["id"]), str(rollout["id"]), action, body)


def active_rollout(v2: EndpointsV2, endpoint: Json) -> Json:
    """The endpoint's ``activeRolloutId``, else the newest rollout that has not ended."""
    ep_id = str(endpoint["id"])
    if endpoint.get("activeRolloutId"):
        return v2.rollout(ep_id, str(endpoint["activeRolloutId"]))
    active = sorted(v2.active_rollouts(ep_id), key=lambda r: str(r.get("createdAt")))
    if not active:
        raise CliFailure(
            f"endpoint {endpoint['name']} has no rollout in progress",
            hint=f"`modelport endpoints rollout {bare(str(endpoint['name']))} TARGET` starts one",
            exit_code=4,
        )
    return active[-1]


# --- starting one --------------------------------------------------------------------------------
def rollout_body(endpoint: Json, target: str, opts: dict[str, Any]) -> Json:
    """``POST …/rollouts``: the pair, one strategy, and the canary's gates."""
    target_id = deployment_id(endpoint, target)
    source_id = deployment_id(endpoint, opts["source"]) if opts["source"] else default_source(endpoint, target_id)
    body: Json = {"sourceDeploymentId": source_id, "targetDeploymentId": target_id, **strategy(opts)}
    if opts["gate"] is not None:
        check = {"direction": "REGRESSION_DIRECTION_HIGHER_IS_WORSE", "maxRegressionPercent": opts["gate"]}
        body["metrics"] = [{**LATENCY_GATE, "regressionCheck": check}]
    return body


def strategy(opts: dict[str, Any]) -> Json:
    chosen = [flag for flag, on in (("--blue-green", opts["blue_green"]), ("--rolling", opts["rolling"])) if on]
    if opts["ladder"] is not None:
        chosen.append("--canary")
    if len(chosen) > 1:
        raise click.UsageError(f"{' and '.join(chosen)}: choose one strategy")
    if opts["blue_green"]:
        if opts["interval"] or opts["gate"] is not None:
            raise click.UsageError("--blue-green switches at once: it takes no --interval or gate")
        return {"blueGreen": {}}
    interval = {"stepInterval": opts["interval"]} if opts["interval"] else {}
    if opts["rolling"]:
        if opts["gate"] is not None:
            raise click.UsageError("gates apply to canary rollouts only")
        return {"rolling": interval}
    steps = [{"traffic": p} for p in parse_ladder(opts["ladder"] or "")]
    canary = interval | ({"steps": steps} if steps else {})
    return {"canary": canary} if canary else {}  # {}: the server's default canary


def parse_ladder(text: str) -> list[float]:
    try:
        return [float(p.strip().rstrip("%")) for p in text.split(",") if p.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected percents such as 10,50,100", param_hint="--canary") from None


def default_source(endpoint: Json, target_id: str) -> str:
    """As Together's CLI: the only other live deployment that has traffic."""
    weights = view.weights_of(endpoint)
    live = [
        d
        for d in endpoint.get("deployments") or []
        if d["id"] != target_id and d.get("trafficMode") != "TRAFFIC_MODE_SHADOW" and weights.get(d["id"], 0) > 0
    ]
    if len(live) != 1:
        others = ", ".join(view.label(d) for d in live) or "none"
        raise CliFailure(
            f"cannot tell which deployment traffic moves from (with traffic: {others})",
            hint="name it with --source",
        )
    return str(live[0]["id"])
