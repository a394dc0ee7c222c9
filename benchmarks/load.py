"""Many tenants at once, on loopback: streaming chats, ingests and job polling together, for a while.

For ``--seconds`` (default 60), against one `modelport serve` with ``--engine-workers`` engine processes:
- ``--chats`` (200) clients, spread over four accounts, each streaming chat completions back to back;
- ``--ingests`` (20) clients, five per account, each uploading a model from a local hub, waiting for its
  job, deleting the model and starting over (so 20 ingests are always in flight);
- four pollers reading ``GET /v1/jobs/{id}`` of running jobs, each every 100 ms, in their own processes.

It reports requests, errors and latencies, and the job-poll latency against a baseline measured in the
same run on the idle server (ratio = loaded p99 / idle p99). Exit status 1 when any request failed or
the loaded job-poll p99 passes its targets: ``--max-job-p99-ms`` (100) and ``--max-job-ratio`` (25x idle).

    .venv/bin/python benchmarks/load.py                      # the full minute (~2 min with setup)
    .venv/bin/python benchmarks/load.py --seconds 10 --chats 50 --ingests 8
    .venv/bin/python benchmarks/load.py --engine-workers 2    # two engine processes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.support.fakehub import FakeHub  # noqa: E402
from tests.support.procs import Proc, free_port, modelport_exe, wait_http  # noqa: E402
from tests.support.tinymodels import files_of, make_llama  # noqa: E402

ADMIN_KEY = "mp-load-admin-key-0123456789abcdef0123"
TENANTS = ("tenant-a", "tenant-b", "tenant-c", "tenant-d")
POLL_INTERVAL_S = 0.1  # per poller: four of them poll about 40 times a second, like busy progress bars


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    tokens: int = 0

    def fail(self, what: str) -> None:
        if len(self.errors) < 20:  # keep a sample, count all
            self.errors.append(what)
        else:
            self.errors.append("")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def serve_hub(port: int, model: Path) -> None:
    """The local hub, in a process of its own so that serving downloads does not slow the clients."""
    hub = FakeHub()
    hub.add("load/chat", files_of(model))
    hub.start(port)
    threading.Event().wait()


def start_hub(work: Path) -> tuple[multiprocessing.Process, str]:
    model = make_llama(work / "chat", hidden=64, layers=2, heads=4, kv_heads=2)
    port = free_port()
    proc = multiprocessing.Process(target=serve_hub, args=(port, model), daemon=True)
    proc.start()
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/api/models/load/chat")
    return proc, url


def start_server(work: Path, hub_url: str, engine_workers: int) -> tuple[Proc, str]:
    port = free_port()
    env = {
        "MODELPORT_DATA_DIR": str(work / "data"),
        "MODELPORT_BOOTSTRAP_API_KEY": ADMIN_KEY,
        "MODELPORT_HF_ENDPOINT": hub_url,
        "MODELPORT_FETCH_ALLOW_HTTP": "true",
        "MODELPORT_FETCH_ALLOW": "localhost,127.0.0.1",
        "MODELPORT_WORKERS": "2",
        "MODELPORT_MAX_NUM_SEQS": "64",
        "MODELPORT_ADMISSION_MAX_BYTES": "0",  # structural checks only: the load is the point, not admission
        "MODELPORT_ENGINE_WORKERS": str(engine_workers),
    }
    proc = Proc([modelport_exe(), "serve", "--port", str(port), "--log-level", "warning"], work / "server.log", env)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health", proc.popen)
    return proc, url


def setup(url: str) -> dict[str, dict[str, str]]:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    keys = {}
    for tenant in TENANTS:
        made = httpx.post(f"{url}/api/v1/keys", json={"account": tenant}, headers=admin).json()
        keys[tenant] = {"Authorization": f"Bearer {made['key']}"}
        resp = httpx.post(
            f"{url}/v1/models", json={"model_name": "chat", "model_source": "load/chat"}, headers=keys[tenant]
        )
        resp.raise_for_status()
        wait_job(url, keys[tenant], resp.json()["data"]["job_id"])
    return keys


def wait_job(url: str, auth: dict[str, str], job_id: str) -> dict[str, Any]:
    while (job := httpx.get(f"{url}/v1/jobs/{job_id}", headers=auth).json())["status"] not in ("Complete", "Failed"):
        time.sleep(0.1)
    return dict(job)


async def chat_client(
    http: httpx.AsyncClient, url: str, auth: dict[str, str], model: str, stop: float, s: Stats
) -> None:
    i = 0
    while time.perf_counter() < stop:
        i += 1
        body = {
            "model": model,
            "messages": [{"role": "user", "content": f"hello there number {i}"}],
            "max_tokens": 16,
            "stream": True,
            "temperature": 0.7,
        }
        started = time.perf_counter()
        first = None
        try:
            async with http.stream("POST", f"{url}/v1/chat/completions", json=body, headers=auth) as resp:
                if resp.status_code != 200:
                    s.fail(f"chat HTTP {resp.status_code}: {(await resp.aread())[:200]!r}")
                    continue
                done = False
                async for line in resp.aiter_lines():
                    if line == "data: [DONE]":
                        done = True
                    elif line.startswith("data: "):
                        event = json.loads(line[6:])
                        if "error" in event:
                            s.fail(f"chat stream error: {event['error']}")
                        elif event.get("choices") and event["choices"][0]["delta"].get("content"):
                            first = first or time.perf_counter()
                            s.tokens += 1
                if not done:
                    s.fail("chat stream ended without [DONE]")
                    continue
        except httpx.HTTPError as e:
            s.fail(f"chat {type(e).__name__}: {e}")
            continue
        s.latencies.append(time.perf_counter() - started)
        s.ttft.append((first or time.perf_counter()) - started)


async def ingest_client(
    http: httpx.AsyncClient, url: str, tenant: str, auth: dict[str, str], n: int, stop: float, s: Stats, active: Any
) -> None:
    round_ = 0
    while time.perf_counter() < stop:
        round_ += 1
        name = f"ingest-{n}-{round_}"
        started = time.perf_counter()
        try:
            resp = await http.post(
                f"{url}/v1/models", json={"model_name": name, "model_source": "load/chat"}, headers=auth
            )
            if resp.status_code != 200:
                s.fail(f"submit HTTP {resp.status_code}: {resp.text[:200]}")
                await asyncio.sleep(1)
                continue
            job_id = resp.json()["data"]["job_id"]
            active[job_id] = tenant
            while True:
                job = (await http.get(f"{url}/v1/jobs/{job_id}", headers=auth)).json()
                if job["status"] in ("Complete", "Failed"):
                    break
                await asyncio.sleep(0.25)
            active.pop(job_id, None)
            if job["status"] != "Complete":
                s.fail(f"job {job_id} failed: {job.get('error')}")
                continue
            s.latencies.append(time.perf_counter() - started)
            deleted = await http.delete(f"{url}/v1/models/{job['args']['modelName']}", headers=auth)
            if deleted.status_code != 200:
                s.fail(f"delete HTTP {deleted.status_code}")
        except httpx.HTTPError as e:
            s.fail(f"ingest {type(e).__name__}: {e}")


def poller(url: str, keys: dict[str, dict[str, str]], active: Any, finished: dict[str, str], seconds: float) -> Stats:
    """Polls running jobs (finished ones when none is running), as a client watching progress would.

    Runs in a process of its own: in the load generator's event loop its timings would include the
    time that loop spends on 200 streams."""
    s = Stats()
    stop = time.perf_counter() + seconds
    with httpx.Client(timeout=60) as http:
        while time.perf_counter() < stop:
            jobs = active.copy() or finished  # one call: a key may leave between listing and reading
            for job_id, tenant in list(jobs.items())[:8]:
                started = time.perf_counter()
                resp = http.get(f"{url}/v1/jobs/{job_id}", headers=keys[tenant])
                if resp.status_code != 200:
                    s.fail(f"job poll HTTP {resp.status_code}")
                    continue
                s.latencies.append(time.perf_counter() - started)
                time.sleep(POLL_INTERVAL_S)
    return s


async def idle_baseline(url: str, auth: dict[str, str], job_id: str, n: int = 300) -> Stats:
    s = Stats()
    async with httpx.AsyncClient(timeout=30) as http:
        for _ in range(n):
            started = time.perf_counter()
            resp = await http.get(f"{url}/v1/jobs/{job_id}", headers=auth)
            resp.raise_for_status()
            s.latencies.append(time.perf_counter() - started)
    return s


async def run_clients(
    url: str, keys: dict[str, dict[str, str]], active: Any, args: argparse.Namespace
) -> tuple[Stats, Stats]:
    chats, ingests = Stats(), Stats()
    # Idle connections are dropped well before the server's 5 s keep-alive ends them: reusing one at
    # the moment the server closes it is a ReadError on the client, a race of HTTP/1.1, not a failure.
    limits = httpx.Limits(
        max_connections=args.chats + args.ingests + 16, max_keepalive_connections=args.chats + 32, keepalive_expiry=2.0
    )
    async with httpx.AsyncClient(timeout=httpx.Timeout(120.0), limits=limits) as http:
        stop = time.perf_counter() + args.seconds
        tenant = [TENANTS[i % len(TENANTS)] for i in range(max(args.chats, args.ingests))]
        tasks = [chat_client(http, url, keys[tenant[i]], f"{tenant[i]}/chat", stop, chats) for i in range(args.chats)]
        tasks += [
            ingest_client(http, url, tenant[i], keys[tenant[i]], i, stop, ingests, active) for i in range(args.ingests)
        ]
        await asyncio.gather(*tasks)
    return chats, ingests


def run_load(
    url: str, keys: dict[str, dict[str, str]], finished: dict[str, str], args: argparse.Namespace
) -> dict[str, Stats]:
    with multiprocessing.Manager() as manager, ProcessPoolExecutor(4) as pool:
        active = manager.dict()
        polls = [pool.submit(poller, url, keys, active, finished, args.seconds) for _ in range(4)]
        chats, ingests = asyncio.run(run_clients(url, keys, active, args))
        merged = Stats()
        for future in polls:
            one = future.result()
            merged.latencies += one.latencies
            merged.errors += one.errors
    return {"chats": chats, "ingests": ingests, "polls": merged}


def report(idle: Stats, loaded: dict[str, Stats], args: argparse.Namespace) -> tuple[str, bool]:
    chats, ingests, polls = loaded["chats"], loaded["ingests"], loaded["polls"]
    errors = len(chats.errors) + len(ingests.errors) + len(polls.errors)
    ratio = pct(polls.latencies, 0.99) / pct(idle.latencies, 0.99)
    lines = [
        f"load for {args.seconds} s: {args.chats} streaming chat clients + {args.ingests} ingest clients, "
        f"4 tenants, 4 job pollers",
        f"chats:   {len(chats.latencies)} completed, {len(chats.errors)} errors, {chats.tokens} tokens "
        f"({chats.tokens / args.seconds:.0f} tok/s); first token p50 {pct(chats.ttft, 0.5):.0f} ms "
        f"p99 {pct(chats.ttft, 0.99):.0f} ms; whole reply p50 {pct(chats.latencies, 0.5):.0f} ms "
        f"p99 {pct(chats.latencies, 0.99):.0f} ms",
        f"ingests: {len(ingests.latencies)} completed, {len(ingests.errors)} errors; submit to Complete "
        f"p50 {pct(ingests.latencies, 0.5):.0f} ms p99 {pct(ingests.latencies, 0.99):.0f} ms",
        f"GET /v1/jobs/{{id}}: {len(polls.latencies)} under load, {len(polls.errors)} errors; p50 "
        f"{pct(polls.latencies, 0.5):.1f} ms p99 {pct(polls.latencies, 0.99):.1f} ms max "
        f"{max(polls.latencies, default=0) * 1000:.1f} ms; idle baseline p50 {pct(idle.latencies, 0.5):.1f} ms "
        f"p99 {pct(idle.latencies, 0.99):.1f} ms; loaded/idle p99 ratio {ratio:.1f}x",
    ]
    for e in [*chats.errors, *ingests.errors, *polls.errors]:
        if e:
            lines.append(f"  error: {e}")
    lines.append(
        f"targets: job-poll p99 <= {args.max_job_p99_ms:.0f} ms and <= {args.max_job_ratio:.0f}x idle "
        f"({args.engine_workers} engine worker{'s' if args.engine_workers > 1 else ''})"
    )
    ok = (
        errors == 0
        and pct(polls.latencies, 0.99) <= args.max_job_p99_ms
        and ratio <= args.max_job_ratio
        and bool(chats.latencies)
    )
    return "\n".join(lines), ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--chats", type=int, default=200)
    parser.add_argument("--ingests", type=int, default=20)
    parser.add_argument("--max-job-p99-ms", type=float, default=100.0, help="target: loaded job-poll p99")
    parser.add_argument("--max-job-ratio", type=float, default=25.0, help="target: loaded / idle job-poll p99")
    parser.add_argument("--engine-workers", type=int, default=1, help="MODELPORT_ENGINE_WORKERS of the server")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--work", type=Path, help="keep the server's data and log here (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        hub, hub_url = start_hub(work)
        proc, url = start_server(work, hub_url, args.engine_workers)
        try:
            keys = setup(url)
            finished = {httpx.get(f"{url}/v1/jobs", headers=keys[t]).json()["data"][0]["job_id"]: t for t in TENANTS}
            idle = asyncio.run(idle_baseline(url, keys[TENANTS[0]], next(iter(finished))))
            loaded = run_load(url, keys, finished, args)
        finally:
            proc.stop()
            hub.terminate()
    text, ok = report(idle, loaded, args)
    print(text)
    if args.json:
        figures = {
            k: {"n": len(v.latencies), "errors": len(v.errors), "p50_ms": pct(v.latencies, 0.5)}
            for k, v in loaded.items()
        }
        args.json.write_text(json.dumps(figures, indent=2))
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
