"""Watch a job or an endpoint until it settles, showing what the server reports as it happens.

On a terminal: a live bar that follows the job's current stage (its byte counts when the stage has
them, a pulse when not), with each status update printed above it. Elsewhere (a pipe, CI): the status
updates, and a byte-count line at most every few seconds.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from rich.progress import BarColumn, Progress, TaskID, TextColumn

from modelport.cli.client import Client
from modelport.cli.errors import CliFailure, in_flags, job_failure
from modelport.cli.output import Output, human_bytes, when

POLL_S = 0.5
PLAIN_EVERY_S = 3.0
TERMINAL_JOB = ("Complete", "Failed")
SETTLED_ENDPOINT = ("STARTED", "STOPPED", "ERROR")
# An ingest job's stages in order (ingest/pipeline.py); a job skips those its source does not need.
STAGES = ("downloading", "extracting", "validating", "admitting", "storing", "registering")
SHORT_ERROR = 60


def current_stage(job: dict[str, Any]) -> str:
    """The stage the job is in: its progress's, else its newest status update's (Queued, Running)."""
    stage = (job.get("progress") or {}).get("stage")
    updates = job.get("status_updates") or []
    return str(stage or (updates[-1]["status"] if updates else job["status"]))


def stage_label(stage: str) -> str:
    """``storing (5/6)``: how far along the job is, for the stages an ingest goes through."""
    return f"{stage} ({STAGES.index(stage) + 1}/{len(STAGES)})" if stage in STAGES else stage


def describe_bytes(progress: dict[str, Any] | None) -> str:
    progress = progress or {}
    done, total = progress.get("bytes_done") or 0, progress.get("bytes_total")
    if not done and not total:
        return ""
    parts = [f"{human_bytes(done)} / {human_bytes(total)}" if total else human_bytes(done)]
    if rate := progress.get("bytes_per_second"):
        parts.append(f"{human_bytes(rate)}/s")
    if (eta := progress.get("eta_seconds")) is not None:
        parts.append(f"ETA {int(eta)} s")
    return ", ".join(parts)


def describe_progress(progress: dict[str, Any] | None) -> str:
    if not progress:
        return ""
    return ", ".join(p for p in (stage_label(str(progress.get("stage", ""))), describe_bytes(progress)) if p)


def job_detail(job: dict[str, Any]) -> str:
    """What a job list says beside the status: a Failed job's reason, a running job's progress."""
    error = job.get("error") or {}
    if job["status"] == "Failed" and error:
        message = in_flags(str(error.get("message") or ""))
        short = message if len(message) <= SHORT_ERROR else message[: SHORT_ERROR - 1] + "…"
        return f"{error.get('code')}: {short}"
    return describe_progress(job.get("progress")) or "-"


class JobBar:
    """One bar that follows the job's stage: a new stage starts a new task, so no total or count from
    the previous stage lingers (rich keeps a task's total once set)."""

    def __init__(self, out: Output) -> None:
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), console=out.err, transient=True)
        self.stage: str | None = None
        self.task: TaskID | None = None

    def show(self, job: dict[str, Any]) -> None:
        stage, progress = current_stage(job), job.get("progress") or {}
        total = progress.get("bytes_total") if progress.get("stage") == stage else None
        text = ", ".join(p for p in (stage_label(stage), describe_bytes(progress)) if p)
        if stage != self.stage or self.task is None:
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task, self.stage = self.progress.add_task(text, total=total), stage
        self.progress.update(self.task, description=text, completed=progress.get("bytes_done") or 0)


def watch_job(client: Client, job_id: str, out: Output) -> dict[str, Any]:
    """Poll until the job is Complete (returned) or Failed (every problem printed, then CliFailure)."""
    interactive = out.err.is_terminal
    bar = JobBar(out)
    seen, last_plain = 0, 0.0
    live: AbstractContextManager[Any] = bar.progress if interactive else nullcontext()
    with live:
        while True:
            job = client.job(job_id)
            if interactive:
                bar.show(job)  # before the updates are printed, so the bar agrees with the last line
            for update in job["status_updates"][seen:]:
                out.message(f"{when(update['timestamp'])}  {update['status']:<12} {in_flags(update['message'])}")
            seen = len(job["status_updates"])
            if job["status"] in TERMINAL_JOB:
                break
            sized = describe_bytes(job.get("progress"))
            if not interactive and sized and time.monotonic() - last_plain >= PLAIN_EVERY_S:
                out.message(f"  {current_stage(job)}: {sized}")
                last_plain = time.monotonic()
            time.sleep(POLL_S)
    if job["status"] == "Failed":
        raise job_failure(job, job["args"].get("modelName"))
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
        detail = f": {in_flags(str(endpoint['error']))}" if endpoint.get("error") else ""
        raise CliFailure(
            f"endpoint {endpoint['name']} is {endpoint['state']}{detail}",
            hint=f"`modelport endpoints get {endpoint['name']}` shows its state; the server's log says more",
            exit_code=5,
        )
    return endpoint
