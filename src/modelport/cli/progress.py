"""Watch a job or an endpoint until it settles, showing what the server reports as it happens.

On a terminal: a live bar (stage, bytes, rate, ETA) with each status update printed above it.
Elsewhere (a pipe, CI): the status updates and a progress line at most every few seconds.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from rich.progress import BarColumn, Progress, TextColumn

from modelport.cli.client import Client
from modelport.cli.errors import CliFailure
from modelport.cli.output import Output, human_bytes, when

POLL_S = 0.5
PLAIN_EVERY_S = 3.0
TERMINAL_JOB = ("Complete", "Failed")
SETTLED_ENDPOINT = ("STARTED", "STOPPED", "ERROR")


def describe_progress(progress: dict[str, Any] | None) -> str:
    if not progress:
        return ""
    done, total = progress.get("bytes_done") or 0, progress.get("bytes_total")
    parts = [str(progress.get("stage", ""))]
    if done or total:
        parts.append(f"{human_bytes(done)} / {human_bytes(total)}" if total else human_bytes(done))
    if rate := progress.get("bytes_per_second"):
        parts.append(f"{human_bytes(rate)}/s")
    if (eta := progress.get("eta_seconds")) is not None:
        parts.append(f"ETA {int(eta)} s")
    return ", ".join(p for p in parts if p)


def watch_job(client: Client, job_id: str, out: Output) -> dict[str, Any]:
    """Poll until the job is Complete (returned) or Failed (every problem printed, then CliFailure)."""
    interactive = out.err.is_terminal
    bar = Progress(TextColumn("{task.description}"), BarColumn(), console=out.err, transient=True)
    task = bar.add_task("queued", total=None)
    seen, last_plain = 0, 0.0
    live: AbstractContextManager[Any] = bar if interactive else nullcontext()
    with live:
        while True:
            job = client.job(job_id)
            for update in job["status_updates"][seen:]:
                out.message(f"{when(update['timestamp'])}  {update['status']:<12} {update['message']}")
            seen = len(job["status_updates"])
            if job["status"] in TERMINAL_JOB:
                break
            text, progress = describe_progress(job.get("progress")), job.get("progress") or {}
            if interactive:
                done, total = progress.get("bytes_done") or 0, progress.get("bytes_total")
                bar.update(task, description=text or job["status"], total=total, completed=done)
            elif text and time.monotonic() - last_plain >= PLAIN_EVERY_S:
                out.message(f"  {text}")
                last_plain = time.monotonic()
            time.sleep(POLL_S)
    if job["status"] == "Failed":
        error = job.get("error") or {}
        raise CliFailure(
            f"job {job_id} failed ({error.get('code', 'failed')}): {error.get('message', '')}",
            hint=f"`modelport jobs get {job_id}` shows every status update",
            exit_code=5,
        )
    return job


def watch_endpoint(client: Client, ref: str, out: Output, want: str = "STARTED") -> dict[str, Any]:
    """Poll until the endpoint settles; ERROR (or settling elsewhere than ``want``) is a CliFailure."""
    last = None
    while True:
        endpoint = client.get_endpoint(ref)
        if endpoint["state"] != last:
            out.message(f"{endpoint['name']}: {endpoint['state']}")
            last = endpoint["state"]
        if endpoint["state"] in SETTLED_ENDPOINT:
            break
        time.sleep(POLL_S)
    if endpoint["state"] != want:
        detail = f": {endpoint['error']}" if endpoint.get("error") else ""
        raise CliFailure(
            f"endpoint {endpoint['name']} is {endpoint['state']}{detail}",
            hint=f"`modelport endpoints get {endpoint['id']}` shows its state; the server's log says more",
            exit_code=5,
        )
    return endpoint
