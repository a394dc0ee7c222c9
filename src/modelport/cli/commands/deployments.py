"""``modelport endpoints show | deploy | split | events``: an endpoint's deployments and traffic, over the v2
routes (``cli/v2endpoints.py``). ``endpoints.py`` adds these commands to its group."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import click

from modelport.cli import endpoint_view as view
from modelport.cli.base import AppContext, connection_options, pass_app
from modelport.cli.client import ApiError, Client, NotFoundError
from modelport.cli.errors import CliFailure
from modelport.cli.output import Output
from modelport.cli.v2endpoints import LEVELS, EndpointsV2, bare

Json = dict[str, Any]


# --- finding things ------------------------------------------------------------------------------
def resolve(v2: EndpointsV2, ref: str) -> Json:
    """The endpoint ``ref`` names, or exit 4 saying how to make one."""
    endpoint = v2.find(ref)
    if endpoint is None:
        raise CliFailure(
            f"endpoint {ref!r} not found",
            hint=f"`modelport endpoints deploy {ref} --model M --hardware H --name N` creates it",
            exit_code=4,
        )
    return endpoint


def deployment_id(endpoint: Json, ref: str) -> str:
    """A deployment of ``endpoint`` by its name or ``dep_`` id."""
    for d in endpoint.get("deployments") or []:
        if ref in (d["id"], d.get("name"), view.label(d)):
            return str(d["id"])
    names = ", ".join(view.names_of(endpoint).values()) or "none yet"
    raise CliFailure(
        f"endpoint {endpoint['name']} has no deployment {ref!r} (it has: {names})",
        hint=f"`modelport endpoints show {endpoint['name']}` lists its deployments",
        exit_code=4,
    )


def optional(listing: Callable[[], list[Json]]) -> list[Json]:
    """A list a server older than this CLI may lack (experiments, rollouts): its 404 means none."""
    try:
        return listing()
    except NotFoundError:
        return []


# --- show ----------------------------------------------------------------------------------------
@click.command("show", short_help="An endpoint's deployments, traffic and rollout.")
@click.argument("endpoint")
@click.option("--events", "event_count", type=int, default=5, show_default=True, help="How many recent events.")
@connection_options
@pass_app
def endpoints_show(app: AppContext, endpoint: str, event_count: int) -> None:
    """Show an endpoint (name or ep_ id): deployments, traffic, rollout, experiments and recent events."""
    v2 = EndpointsV2(app.client())
    detail = gather(v2, resolve(v2, endpoint), event_count)
    if app.json:
        return app.output.json(detail)
    show_detail(app.output, detail, revision_numbers(app.client(), detail["deployments"], v2.model_names()))


def gather(v2: EndpointsV2, endpoint: Json, event_count: int) -> Json:
    """Everything ``show`` prints, as the wire's objects (``--json`` prints this)."""
    ep_id = str(endpoint["id"])
    rollout = v2.rollout(ep_id, endpoint["activeRolloutId"]) if endpoint.get("activeRolloutId") else None
    events = v2.events(ep_id)
    return {
        "endpoint": endpoint,
        "deployments": v2.deployments(ep_id),
        "rollout": rollout,
        "abExperiments": optional(lambda: v2.ab_experiments(ep_id)),
        "shadowExperiments": optional(lambda: v2.shadow_experiments(ep_id)),
        "events": events[-event_count:] if event_count > 0 else [],
    }


def revision_numbers(client: Client, deployments: Sequence[Json], models: dict[str, str]) -> tuple[Json, Json]:
    """Model names by ``ml_`` id, and revision numbers by revision id, for ``MODEL@N`` (what --model takes)."""
    numbers: Json = {}
    for model_id in {str(d.get("modelId")) for d in deployments if d.get("modelId") in models}:
        try:
            revisions = client.list_revisions(models[model_id])["data"]
        except ApiError:  # shown by revision id instead
            continue
        numbers.update({r["id"]: r["number"] for r in revisions})
    return models, numbers


def show_detail(out: Output, detail: Json, names_and_numbers: tuple[Json, Json]) -> None:
    endpoint = detail["endpoint"]
    names = view.names_of(endpoint)
    out.fields(view.endpoint_fields(endpoint))
    out.heading("Deployments")
    rows = view.deployment_rows(endpoint, detail["deployments"], *names_and_numbers)
    out.table(view.DEPLOYMENT_COLUMNS, rows, empty="No deployments: `modelport endpoints deploy` adds one.")
    if detail["rollout"]:
        out.heading("Rollout")
        out.fields(view.rollout_fields(detail["rollout"], names))
    if detail["abExperiments"]:
        out.heading("A/B experiments")
        out.table(view.AB_COLUMNS, view.ab_rows(detail["abExperiments"], names), empty="")
    if detail["shadowExperiments"]:
        out.heading("Shadow experiments")
        out.table(view.SHADOW_COLUMNS, view.shadow_rows(detail["shadowExperiments"], names), empty="")
    if detail["events"]:
        out.heading("Recent events")
        out.table(view.EVENT_COLUMNS, view.event_rows(detail["events"], names), empty="")


# --- events --------------------------------------------------------------------------------------
@click.command("events", short_help="List an endpoint's events.")
@click.argument("endpoint")
@click.option("--level", type=click.Choice(LEVELS), default=None, help="Only events at this level or above.")
@click.option("--deployment", "deployments", multiple=True, help="Only this deployment's events (repeatable).")
@connection_options
@pass_app
def endpoints_events(app: AppContext, endpoint: str, level: str | None, deployments: tuple[str, ...]) -> None:
    """List what happened to an endpoint and its deployments, oldest first."""
    v2 = EndpointsV2(app.client())
    ep = resolve(v2, endpoint)
    wanted = [deployment_id(ep, d) for d in deployments]
    events = v2.events(str(ep["id"]), min_level=level, deployment_ids=wanted)
    if app.json:
        return app.output.json(events)
    app.output.table(view.EVENT_COLUMNS, view.event_rows(events, view.names_of(ep)), empty="No events.")


# --- deploy --------------------------------------------------------------------------------------
@click.command("deploy", short_help="Add a deployment to an endpoint.")
@click.argument("endpoint")
@click.option("--model", required=True, help="MODEL or MODEL@REVISION (a revision number or id).")
@click.option("--hardware", required=True, help="A configuration id from `endpoints hardware`.")
@click.option("--name", required=True, help="The deployment's name within the endpoint.")
@click.option("--min-replicas", type=int, default=1, show_default=True)
@click.option("--max-replicas", type=int, default=1, show_default=True)
@click.option("--max-concurrent", type=int, default=None, help="Requests per replica at once.")
@connection_options
@pass_app
def endpoints_deploy(app: AppContext, /, endpoint: str, **opts: Any) -> None:
    """Add a deployment to an endpoint, creating the endpoint if needed; print the deployment's id.

    The first deployment takes all the traffic; later ones start at weight 0 (see `split`, `rollout`).
    """
    v2, out = EndpointsV2(app.client()), app.output
    ep, created = _endpoint_for_deploy(v2, endpoint)
    try:
        deployment = v2.create_deployment(str(ep["id"]), deployment_body(opts))
    except ApiError as e:
        if created:  # a failed first deployment leaves no empty endpoint behind
            v2.delete(ep)
        if e.status == 409:  # the name is taken in this endpoint
            raise CliFailure(e.message, hint=f"`modelport endpoints show {ep['name']}` lists its deployments") from e
        raise
    ep = v2.get(str(ep["id"]))
    if app.json:
        return out.json({"endpoint": ep, "deployment": deployment})
    out.line(str(deployment["id"]))
    out.success(f"deployed {view.label(deployment)} to {ep['name']}: {_traffic_note(ep, deployment)}")


def _endpoint_for_deploy(v2: EndpointsV2, ref: str) -> tuple[Json, bool]:
    """The endpoint, and whether this command created it."""
    found = v2.find(ref)
    if found is not None:
        return found, False
    if ref.startswith("ep_"):
        resolve(v2, ref)  # an id names an endpoint that exists; a name may be new
    try:
        return v2.create(ref), True
    except ApiError as e:
        if e.status != 409:
            raise
        return resolve(v2, ref), False  # another client made it just now


def deployment_body(opts: dict[str, Any]) -> Json:
    """``POST …/deployments``: the model by name (the server takes ours), the hardware as its config id."""
    model, _, revision = str(opts["model"]).partition("@")
    hardware = str(opts["hardware"])
    body: Json = {
        "name": opts["name"],
        "modelId": model,
        "configId": hardware if hardware.startswith(view.CONFIG_PREFIX) else view.CONFIG_PREFIX + hardware,
        "autoscaling": {"minReplicas": opts["min_replicas"], "maxReplicas": opts["max_replicas"]},
    }
    if revision:
        body["modelRevisionId"] = revision
    if opts.get("max_concurrent"):
        body["maxConcurrentRequestsPerReplica"] = str(opts["max_concurrent"])  # int64: a string on this wire
    return body


def _traffic_note(endpoint: Json, deployment: Json) -> str:
    weight = view.weights_of(endpoint).get(str(deployment["id"]), 0.0)
    if weight > 0:
        return "it takes the endpoint's traffic"
    name, target = bare(str(endpoint["name"])), view.label(deployment)
    return (
        f"it has no traffic yet: `modelport endpoints rollout {name} {target}` moves traffic to it in steps, "
        f"`modelport endpoints split {name} {target}=1` at once"
    )


# --- split ---------------------------------------------------------------------------------------
@click.command("split", short_help="Set the traffic split between deployments.")
@click.argument("endpoint")
@click.argument("weights", nargs=-1, required=True, metavar="NAME=WEIGHT...")
@connection_options
@pass_app
def endpoints_split(app: AppContext, endpoint: str, weights: tuple[str, ...]) -> None:
    """Set deployments' traffic weights; those not named keep theirs. Each gets weight/total of requests."""
    v2 = EndpointsV2(app.client())
    ep = resolve(v2, endpoint)
    wanted = {deployment_id(ep, name): weight for name, weight in map(parse_weight, weights)}
    split = view.weights_of(ep) | wanted
    try:
        ep = v2.set_split(ep, split.items())
    except ApiError as e:
        if e.status != 409:
            raise
        raise CliFailure(
            f"endpoint {ep['name']} changed while this command ran (another client wrote to it)",
            hint="run the same command again: it reads the current split first",
        ) from e
    if app.json:
        return app.output.json(ep)
    app.output.table(view.SPLIT_COLUMNS, view.split_rows(ep), empty="No deployments.")


def parse_weight(text: str) -> tuple[str, float]:
    name, sep, value = text.rpartition("=")
    try:
        weight = float(value)
    except ValueError:
        weight = math.nan
    if not sep or not name or not 0 <= weight < math.inf:
        raise click.BadParameter(f"{text!r}: expected NAME=WEIGHT with a weight >= 0", param_hint="NAME=WEIGHT")
    return name, weight
