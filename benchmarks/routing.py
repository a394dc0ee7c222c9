"""What routing a request by an endpoint's name costs, against sending it straight to a deployment.

One `modelport serve` (SQLite, CPU, a local fake hub, a tiny Llama) runs an endpoint with deployments
"a" and "b" (and "c", which only ever receives shadow copies). Each phase sends ``--requests`` (300)
non-streaming chat completions with max_tokens=1 from ``--concurrency`` (4) clients:

1. direct: ``model`` is deployment a's full name (``<account>/<endpoint>/a``), which skips the split;
2. split: ``model`` is the endpoint's name, with the traffic split a 50 / b 50;
3. split + A/B: as 2, with an A/B experiment dividing a's share (control a 80 / variant b 20);
4. split + shadow: as 2, with a shadow experiment copying every request (rate 1.0) to c (weight 0).

The phases run interleaved, in ``--rounds`` (10) rounds of a slice of each, in an order rotated every
round, so that drift of the machine hits all of them alike. An experiment exists only during its own
phase's slice; after each shadow slice the benchmark waits (untimed) until c has finished every copy.

Ratios are phase / direct: p50 ratio 1.10x means the median request took 10 % longer than the direct
one; req/s ratio 0.90x means 10 % fewer requests per second. Shares are the fraction of a phase's
requests each deployment answered (header ``x-modelport-deployment``) against the fraction its split
asks. Exit status 1 when any request (or shadow copy) failed.

    .venv/bin/python benchmarks/routing.py                  # 4 x 300 requests (~30 s in all on 2 cores)
    .venv/bin/python benchmarks/routing.py --requests 60    # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.support.fakehub import FakeHub  # noqa: E402
from tests.support.procs import Proc, free_port, modelport_exe, wait_http  # noqa: E402
from tests.support.tinymodels import files_of, make_llama  # noqa: E402

KEY = "mp-routing-bench-key-0123456789abcdef0123"
ACCOUNT, ENDPOINT = "bench", "route-bench"
P = "/v2/projects/null"
ANSWERED_BY = "x-modelport-deployment"
READY, FAILED = "DEPLOYMENT_STATE_READY", "DEPLOYMENT_STATE_FAILED"
CONTROL, VARIANT = "AB_EXPERIMENT_MEMBER_ROLE_CONTROL", "AB_EXPERIMENT_MEMBER_ROLE_VARIANT"
PHASES = ("direct a", "split 50/50", "split + A/B a80/b20", "split + shadow to c")
MESSAGES = [{"role": "user", "content": "the capital of france is"}]
# The shares each phase's split asks (docs/endpoints.md): weight over the total weight, then the A/B
# experiment divides its control's share (a's 50 %) by its percents: a 50 x 0.8, b 50 + 50 x 0.2.
ASKED = ({"a": 1.0}, {"a": 0.5, "b": 0.5}, {"a": 0.4, "b": 0.6}, {"a": 0.5, "b": 0.5})


@dataclass
class Tally:
    """What one phase measured over all its slices."""

    latencies: list[float] = field(default_factory=list)
    answered: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Bench:
    http: httpx.AsyncClient
    endpoint_id: str
    endpoint_name: str
    ids: dict[str, str]  # label -> dep_…
    names: dict[str, str]  # label -> <account>/<endpoint>/<label>
    shadow_copies: int = 0
    shadow_sent: int = 0
    shadow_errors: int = 0

    async def api(self, method: str, path: str, body: Any = None) -> Any:
        """A request to this endpoint's ``path`` (``/v2/projects/null/endpoints`` + ``path``), or exit."""
        resp = await self.http.request(method, f"{P}/endpoints{path}", json=body)
        if resp.status_code != 200:
            raise SystemExit(f"{method} {path}: {resp.status_code} {resp.text[:500]}")
        return resp.json()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


# --- setup ----------------------------------------------------------------------------------------
def start_server(work: Path, hub: FakeHub) -> tuple[Proc, str]:
    port = free_port()
    env = {
        "MODELPORT_DATA_DIR": str(work / "data"),
        "MODELPORT_BOOTSTRAP_API_KEY": KEY,
        "MODELPORT_BOOTSTRAP_ACCOUNT": ACCOUNT,
        "MODELPORT_HF_ENDPOINT": hub.url,
        "MODELPORT_FETCH_ALLOW_HTTP": "true",
        "MODELPORT_FETCH_ALLOW": "localhost,127.0.0.1",
        "MODELPORT_QUOTA_ENDPOINT_SHARE": "1",  # one account runs every replica
        "MODELPORT_ENDPOINT_MEMORY_BYTES": str(32 * 2**30),  # room for three CPU deployments on any host
        "CUDA_VISIBLE_DEVICES": "",
    }
    args = [modelport_exe(), "serve", "--port", str(port), "--log-level", "warning"]
    proc = Proc(args, work / "server.log", env)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health", proc.popen)
    return proc, url


async def upload(http: httpx.AsyncClient, name: str, source: str) -> None:
    resp = await http.post("/v1/models", json={"model_name": name, "model_source": source})
    resp.raise_for_status()
    job_id = resp.json()["data"]["job_id"]
    while (job := (await http.get(f"/v1/jobs/{job_id}")).json())["status"] not in ("Complete", "Failed"):
        await asyncio.sleep(0.1)
    if job["status"] != "Complete":
        raise SystemExit(f"upload of {name} failed: {job}")


async def smallest_cpu_config(http: httpx.AsyncClient) -> str:
    hardware = (await http.get("/v1/hardware")).json()["data"]
    cpu = [h for h in hardware if h["specs"]["gpu_type"] == "cpu"]
    return "cr_" + str(min(cpu, key=lambda h: (h["specs"]["gpu_memory"], h["specs"]["gpu_count"]))["id"])


async def deploy(http: httpx.AsyncClient, hub: FakeHub, model_dir: Path) -> Bench:
    hub.add(f"{ACCOUNT}/tiny", files_of(model_dir))
    await upload(http, "tiny", f"{ACCOUNT}/tiny")
    model_id, config = (await http.get(f"{P}/models/{ACCOUNT}/tiny")).json()["id"], await smallest_cpu_config(http)
    bench = Bench(http, "", "", {}, {})
    endpoint = await bench.api("POST", "", {"name": ENDPOINT})
    bench.endpoint_id, bench.endpoint_name = endpoint["id"], endpoint["name"]
    e = f"/{bench.endpoint_id}"
    for label in ("a", "b", "c"):
        body = {
            "name": label,
            "model": f"projects/null/models/{model_id}",
            "config": f"projects/null/configs/{config}",
            "autoscaling": {"minReplicas": 1, "maxReplicas": 1},
        }
        made = await bench.api("POST", f"{e}/deployments", body)
        bench.ids[label], bench.names[label] = made["id"], made["name"]
    for label in bench.ids:
        await wait_ready(bench, label)
    split = [{"deploymentId": bench.ids[d], "weight": w} for d, w in (("a", 1), ("b", 1), ("c", 0))]
    etag = (await bench.api("GET", e))["etag"]
    await bench.api("PATCH", f"{e}?updateMask=trafficSplit", {"etag": etag, "trafficSplit": split})
    print(f"endpoint {bench.endpoint_name}: deployments a, b, c on {config}, all READY", file=sys.stderr)
    return bench


async def wait_ready(bench: Bench, label: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while (status := (await bench.api("GET", f"/{bench.endpoint_id}/deployments/{bench.ids[label]}"))["status"])[
        "state"
    ] != READY:
        if status["state"] == FAILED or time.monotonic() > deadline:
            raise SystemExit(f"deployment {label} did not become ready: {status}")
        await asyncio.sleep(0.3)


# --- experiments, one phase's slice at a time -----------------------------------------------------
async def arm(bench: Bench, phase: int) -> str | None:
    """Create the experiment that ``phase`` measures; its id (None for phases without one)."""
    if phase == 2:
        members = [
            {"deploymentId": bench.ids["a"], "percent": 80, "role": CONTROL},
            {"deploymentId": bench.ids["b"], "percent": 20, "role": VARIANT},
        ]
        made = await bench.api("POST", f"/{bench.endpoint_id}/abExperiments", {"name": "ab", "members": members})
        return str(made["id"])
    if phase == 3:
        source = {"endpoint": {"sampling": {"uniform": {"rate": 1.0}}}}
        targets = [{"name": "c", "targetDeploymentId": bench.ids["c"]}]
        body = {"name": "shadow", "source": source, "targets": targets}
        made = await bench.api("POST", f"/{bench.endpoint_id}/shadowExperiments", body)
        return str(made["id"])
    return None


async def disarm(bench: Bench, phase: int, experiment: str | None, sent: int) -> None:
    if phase == 2:
        await bench.api("DELETE", f"/{bench.endpoint_id}/abExperiments/{experiment}")
    elif phase == 3:
        await drain_shadow(bench, str(experiment), sent)
        await bench.api("DELETE", f"/{bench.endpoint_id}/shadowExperiments/{experiment}")


async def drain_shadow(bench: Bench, experiment: str, sent: int, timeout: float = 60) -> None:
    """Wait (untimed) until c has finished the slice's copies, so they do not slow the next phase."""
    deadline, done = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        shadow = await bench.api("GET", f"/{bench.endpoint_id}/shadowExperiments/{experiment}")
        target = shadow["targets"][0]
        done = int(target["mirroredRequests"])
        bench.shadow_errors = int(target["comparison"]["target"]["errors"])  # c's errors, last 5 minutes
        if done >= sent:
            break
        await asyncio.sleep(0.05)
    bench.shadow_copies, bench.shadow_sent = bench.shadow_copies + done, bench.shadow_sent + sent


# --- load -----------------------------------------------------------------------------------------
async def one(http: httpx.AsyncClient, model: str, tally: Tally) -> None:
    body = {"model": model, "messages": MESSAGES, "max_tokens": 1, "temperature": 0}
    started = time.perf_counter()
    try:
        resp = await http.post("/v1/chat/completions", json=body)
    except httpx.HTTPError as e:
        tally.failures.append(f"{type(e).__name__}: {e}")
        return
    if resp.status_code != 200:
        tally.failures.append(f"HTTP {resp.status_code}: {resp.text[:200]}")
        return
    tally.latencies.append(time.perf_counter() - started)
    tally.answered[resp.headers.get(ANSWERED_BY, "(none)")] += 1


async def slice_(http: httpx.AsyncClient, model: str, n: int, concurrency: int, tally: Tally) -> None:
    left = iter(range(n))

    async def client() -> None:
        for _ in left:  # the clients share one iterator: n requests in all
            await one(http, model, tally)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    tally.seconds += time.perf_counter() - started


async def measure(bench: Bench, args: argparse.Namespace) -> list[Tally]:
    models = [bench.names["a"], *[bench.endpoint_name] * 3]
    warm = 2 * args.concurrency
    for label in ("a", "b", "c"):  # every engine, then a round of each phase's path, untallied
        await slice_(bench.http, bench.names[label], warm, args.concurrency, Tally())
    await round_(bench, models, range(4), warm, args.concurrency, [Tally() for _ in PHASES])
    bench.shadow_copies = bench.shadow_sent = 0
    tallies = [Tally() for _ in PHASES]
    for r in range(args.rounds):
        n = args.requests // args.rounds + (1 if r < args.requests % args.rounds else 0)
        await round_(bench, models, [(r + k) % 4 for k in range(4)], n, args.concurrency, tallies)
    return tallies


async def round_(
    bench: Bench, models: list[str], order: Iterable[int], n: int, concurrency: int, tallies: list[Tally]
) -> None:
    for phase in order:
        experiment = await arm(bench, phase)
        await slice_(bench.http, models[phase], n, concurrency, tallies[phase])
        await disarm(bench, phase, experiment, n)


# --- report ---------------------------------------------------------------------------------------
def report(bench: Bench, tallies: list[Tally], args: argparse.Namespace) -> tuple[str, bool]:
    label = {v: k for k, v in bench.ids.items()}
    base = tallies[0]
    base_p50, base_rps = pct(base.latencies, 0.5), len(base.latencies) / base.seconds
    lines = [
        f"routing: {args.requests} chat completions (max_tokens=1) per phase, {args.concurrency} clients, "
        f"{args.rounds} interleaved rounds; tiny Llama on CPU",
        "",
        "| phase | p50 ms | p95 ms | req/s | p50 ratio | req/s ratio | shares got (asked) |",
        "|---|---|---|---|---|---|---|",
    ]
    for phase, (name, t) in enumerate(zip(PHASES, tallies, strict=True)):
        p50, rps, total = pct(t.latencies, 0.5), len(t.latencies) / t.seconds, max(1, sum(t.answered.values()))
        want = ASKED[phase]
        got = {label.get(d, d): n / total for d, n in t.answered.items()}
        shares = ", ".join(f"{d} {got.get(d, 0):.1%} ({want.get(d, 0):.0%})" for d in sorted(want.keys() | got.keys()))
        lines.append(
            f"| {phase + 1}. {name} | {p50:.1f} | {pct(t.latencies, 0.95):.1f} | {rps:.1f} | "
            f"{p50 / base_p50:.2f}x | {rps / base_rps:.2f}x | {shares} |"
        )
    failures = [f for t in tallies for f in t.failures]
    c_live = sum(t.answered[bench.ids["c"]] for t in tallies)
    lines += [
        "",
        f"shadow copies to c: {bench.shadow_copies} of {bench.shadow_sent} finished, {bench.shadow_errors} "
        f"failed; live requests c answered: {c_live} (should be 0)",
        f"failed requests: {len(failures)}",
        *(f"  {f}" for f in failures[:20]),
    ]
    ok = not failures and not bench.shadow_errors and bench.shadow_copies >= bench.shadow_sent and not c_live
    return "\n".join(lines), ok


async def run(work: Path, hub: FakeHub, url: str, args: argparse.Namespace) -> tuple[str, bool]:
    limits = httpx.Limits(max_connections=args.concurrency + 8, keepalive_expiry=2.0)  # before the server's 5 s
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120, limits=limits) as http:
        bench = await deploy(http, hub, make_llama(work / "tiny"))
        tallies = await measure(bench, args)
    return report(bench, tallies, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300, help="requests per phase")
    parser.add_argument("--concurrency", type=int, default=4, help="concurrent clients")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds the requests are spread over")
    parser.add_argument("--work", type=Path, help="keep the server's data and log here (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        hub = FakeHub()
        hub.start(free_port())
        proc, url = start_server(work, hub)
        try:
            text, ok = asyncio.run(run(work, hub, url, args))
        finally:
            proc.stop()
            hub.stop()
    print(text)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
