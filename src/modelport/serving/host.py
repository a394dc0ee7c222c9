"""An engine process: ``modelport engine --spec FILE --socket PATH``.

The API server never runs a model itself. It starts engine processes and speaks to them over the
engine protocol (``ipc.py``): the serverless pool's workers (``pool.py``), which load whatever model or
adapter they are sent, and each dedicated endpoint's replicas (``endpoints/supervisor.py``), which load
their one model before they answer at all. Both are this module, told apart by their spec only, so the
router treats "a serverless worker" and "a replica of endpoint X" alike. ``spawn`` starts one as a new
program (``modelport engine``), importing torch; ``fork_engine`` forks one from the fork server, which has.

A crash here (out of memory, a fault in native code, SIGKILL) ends this process only: the parent sees
the exit, fails what was in flight with ``engine_restarted`` and starts another. The process exits
when its parent goes away, so none outlives the server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from modelport import forkserver
from modelport.serving.engine import Artifact, Pooling, Preloading
from modelport.serving.wire import artifact_from_json, artifact_to_json, pooling_from_json, pooling_to_json
from modelport.settings import Settings

log = logging.getLogger(__name__)

# The settings an engine reads; the rest (database, keys, storage credentials) never reach its process.
ENGINE_FIELDS = (
    "data_dir",
    "engine",
    "engine_fake_token_delay_s",
    "engine_nice",
    "engine_workers",  # the default memory budgets are shared by this many processes
    "engine_device",
    "engine_dtype",
    "engine_memory_bytes",
    "engine_sequence_memory_bytes",
    "max_num_seqs",
    "max_loras",
    "max_model_len",
    "max_queued_requests",
    "prefill_token_budget",
    "prefix_caching",
    "prefix_cache_bytes",
)


def engine_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The environment of an engine process: the allowed part of ours (``forkserver.child_env``: not
    MODELPORT_*, its settings come in the spec, and no credentials), ``extra`` on top."""
    return forkserver.child_env(extra)


def engine_settings(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """The engine's share of ``settings``, as JSON values, with ``overrides`` on top."""
    values = settings.model_dump(mode="json", include=set(ENGINE_FIELDS))
    return {**values, **overrides}


@dataclass(frozen=True)
class EngineSpec:
    """What one engine process runs. ``to_json`` is its ``--spec`` file; ``env`` is set on top of the
    parent's environment (a replica's CUDA_VISIBLE_DEVICES or OMP_NUM_THREADS) and is not in the file."""

    parent_pid: int  # the process exits when this one (the API server) goes away
    settings: dict[str, Any]  # ``engine_settings``
    model: Artifact | None = None  # an endpoint replica's model, loaded before the process answers
    context_length: int = 0
    pooling: Pooling | None = None  # embedding models: nothing to preload, the first request loads it
    env: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "parent_pid": self.parent_pid,
            "settings": self.settings,
            "model": artifact_to_json(self.model) if self.model is not None else None,
            "context_length": self.context_length,
            "pooling": pooling_to_json(self.pooling) if self.pooling is not None else None,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EngineSpec:
        return cls(
            parent_pid=int(d["parent_pid"]),
            settings=dict(d["settings"]),
            model=artifact_from_json(d["model"]) if d.get("model") else None,
            context_length=int(d.get("context_length") or 0),
            pooling=pooling_from_json(d["pooling"]) if d.get("pooling") else None,
        )


class EngineProcess(Protocol):
    """An engine process as its starter watches it: ``subprocess.Popen`` (``spawn``) or a child of the
    fork server (``fork_engine``). ``returncode`` is negative for a signal, as Popen's."""

    pid: int

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


def prepare(spec: EngineSpec, spec_path: Path, socket_path: Path) -> None:
    """Write the spec where the process reads it, and clear the way for its socket."""
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(spec.to_json()))
    socket_path.unlink(missing_ok=True)  # a stale socket must not pass for a ready process


def spawn(spec: EngineSpec, spec_path: Path, socket_path: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """Write the spec and start the process as a program, importing everything from scratch (seconds
    for torch; ``fork_engine`` does not); its output goes to ``log_path``. It answers on ``socket_path``
    once it is ready (``ipc.probe``)."""
    prepare(spec, spec_path, socket_path)
    command = [sys.executable, "-m", "modelport.cli.main", "engine", "--spec", str(spec_path)]
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            [*command, "--socket", str(socket_path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=engine_env(spec.env),
        )


def fork_engine(
    spec: EngineSpec, spec_path: Path, socket_path: Path, log_path: Path, *, timeout: float
) -> forkserver.Forked:
    """``spawn``, forked from the server's fork server (``modelport/forkserver.py``), which has torch
    and the engines imported: the same process in milliseconds, once the fork server is up (``timeout``
    bounds that wait)."""
    prepare(spec, spec_path, socket_path)
    target = f"{__name__}:run_forked"
    args = [str(spec_path), str(socket_path)]
    return forkserver.server().fork(target, args, env=engine_env(spec.env), log=log_path, timeout=timeout)


def terminate(proc: EngineProcess, grace_s: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def exit_reason(code: int) -> str:
    """How a process ended, in words: "was killed by SIGKILL", "exited with status 1"."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def log_tail(path: Path, chars: int = 400) -> str:
    """The end of a process's log on one line, for the error that says why it failed."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return " ".join(text[-chars:].split())


def run(spec_path: Path | None, socket_path: Path) -> None:
    """The engine process's main (``modelport engine``): build the engine, load the replica's model, then
    serve until killed.

    Without a spec, the process was started by hand (``MODELPORT_ENGINE_SOCKETS``): its engine settings
    come from the environment, and it outlives whoever started it."""
    if spec_path is None:
        spec = EngineSpec(0, engine_settings(Settings()))
    else:
        spec = EngineSpec.from_json(json.loads(spec_path.read_text()))
        watch_parent(spec.parent_pid)
    serve(spec, socket_path)


def run_forked(spec_path: str, socket_path: str) -> None:
    """The main of an engine process forked by the fork server (``fork_engine``). Its parent is the fork
    server, not the API server the spec names; the fork server exits when the API server does."""
    from modelport.logs import setup

    setup("warning")  # ``modelport engine``'s default
    watch_parent(os.getppid())
    serve(EngineSpec.from_json(json.loads(Path(spec_path).read_text())), Path(socket_path))


def serve(spec: EngineSpec, socket_path: Path) -> None:
    from modelport.serving.engines import ENGINES
    from modelport.serving.ipc import EngineServer

    settings = Settings(**spec.settings)
    os.nice(settings.engine_nice)  # before any thread: torch's threads inherit it
    engine = ENGINES[settings.engine](settings)
    engine.start()
    if spec.model is not None and spec.pooling is None and isinstance(engine, Preloading):
        engine.preload(spec.model, spec.context_length)  # the socket answers only once this is done
    try:
        asyncio.run(EngineServer(engine, socket_path).serve())
    finally:
        engine.stop()


def watch_parent(parent: int) -> None:
    """Exit when the server that started us is gone, so no engine process outlives it."""

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(0)
            time.sleep(1.0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
