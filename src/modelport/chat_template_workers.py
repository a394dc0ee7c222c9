"""Tenants' chat templates rendered in worker processes, under a budget of time and memory.

A template is code that runs on every chat request, and admission only proves it renders "Hello": one
that branches on the message (``{% if m.content.startswith('SPIN:') %}``) passes and can then loop for
minutes or build gigabytes. What was weighed, and why this module does what it does:

- *A thread with a timeout* bounds nothing: a thread cannot be stopped, a CPU-bound Jinja loop holds
  the interpreter lock in 5 ms slices the event loop must win back, and one C-level call
  (``'x'.center(10**9)``) holds it, and a gigabyte, throughout.
- *``sys.settrace`` counting events in the rendering thread* stops Python-level loops, but puts a
  Python call on every line of every render (8x slower here), still shares the lock, and sees nothing of a
  C call that allocates a gigabyte: memory has no in-process bound at all.
- *The sandbox alone* (``ImmutableSandboxedEnvironment``, intercepted ``*``, ``+`` and ``**``, Jinja's
  bounded ``range``, an output cap) refuses the obvious amplifiers in microseconds with a precise
  reason, but the list of C-level ones (``center``, ``ljust``, ``%`` widths, ``format``, ``indent``...)
  is open-ended, and nested bounded loops still run for hours.
- *Worker processes* (chosen, with the sandbox checks kept in front of them): renders run in a small
  pool of long-lived ``python`` processes that import only Jinja (``chat_template_workers``). Each has an
  address-space limit (``RLIMIT_AS``, ``chat_template_memory_bytes`` above its own start), a CPU-time
  alarm that stops a render cleanly (``ITIMER_PROF`` at ``chat_template_timeout_s``), an
  ``RLIMIT_CPU`` backstop and a lower scheduling priority; the parent kills a worker that has not
  answered by its wall-clock deadline and starts another. Nothing is shared with the API process but a
  pipe it waits on without the lock, and memory is bounded by the kernel. Compiling happens there too:
  Jinja folds constant expressions while it compiles (``{{ 'x'|center(10**9) }}`` runs at compile time).

The price is one pipe round trip per render: about 0.3 ms on the 2-core CI machine for the demo
template, against 0.03 ms in process (``tests/security/test_templates_prompts.py`` prints both). Compiled
templates are cached (before, every request compiled its template again: about 1.7 ms), so a chat
request spends less time on its template than it used to.

Each tenant may hold at most ``workers - 1`` workers at once (one when there is a single worker), so
one tenant's slow templates queue behind each other and leave a worker for everyone else.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from modelport.chat_template import (
    MAX_RENDERED_CHARS,
    MAX_TEMPLATE_BYTES,
    ChatTemplateError,
    TemplateBudgetError,
    render,
)

if TYPE_CHECKING:  # the worker process imports this module, and should not pay for pydantic
    from modelport.settings import Settings

_FRAME = struct.Struct(">Q")
_WALL_GRACE_S = 1.0  # past the CPU budget, before a worker that stopped answering is killed
_WORKER_ENV = frozenset({"PATH", "PYTHONPATH", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR"})


class _OutOfTime(BaseException):
    """Raised by the CPU-time alarm; a BaseException so that no ``except Exception`` on the way swallows it."""


def worker_main() -> None:
    """The worker's loop: read a framed JSON request from stdin, answer a framed JSON reply on stdout."""
    memory_bytes = int(sys.argv[1])
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing else may write into the reply pipe
    _limit_self(memory_bytes)
    while (frame := _read_frame(requests)) is not None:
        reply = _serve(json.loads(frame))
        replies.write(_frame(json.dumps(reply).encode()))
        replies.flush()


def _limit_self(memory_bytes: int) -> None:
    import resource

    os.nice(10)  # the API process comes first when the CPU is short
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    with open("/proc/self/status") as status:
        size_kb = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (size_kb * 1024 + memory_bytes, resource.RLIM_INFINITY))

    def out_of_time(_signum: int, _frame: Any) -> None:
        raise _OutOfTime

    signal.signal(signal.SIGPROF, out_of_time)


def _serve(request: dict[str, Any]) -> dict[str, Any]:
    import resource

    seconds = float(request["seconds"])
    used = resource.getrusage(resource.RUSAGE_SELF)
    backstop = math.ceil(used.ru_utime + used.ru_stime + 2 * seconds + 1)  # SIGXCPU kills even an orphan
    resource.setrlimit(resource.RLIMIT_CPU, (backstop, resource.RLIM_INFINITY))
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        args = request["template"], request["messages"]
        text = render(
            *args,
            add_generation_prompt=request["add_generation_prompt"],
            max_chars=request["max_chars"],
            **request["specials"],
        )
        return {"text": text}
    except _OutOfTime:
        return {"budget": f"the chat template took more than {seconds:g} s of CPU time to render"}
    except MemoryError:
        return {"budget": "the chat template needed more memory than its budget allows"}
    except TemplateBudgetError as e:
        return {"budget": str(e)}
    except ChatTemplateError as e:
        return {"error": str(e)}
    except Exception as e:  # whatever else a tenant's template manages to raise is its own failure
        return {"error": f"the chat template failed to render: {type(e).__name__}: {e}"}
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)


def _frame(payload: bytes) -> bytes:
    return _FRAME.pack(len(payload)) + payload


def _read_frame(stream: Any) -> bytes | None:
    header = stream.read(_FRAME.size)
    if len(header) < _FRAME.size:
        return None
    payload: bytes = stream.read(_FRAME.unpack(header)[0])
    return payload


class _WorkerLost(Exception):
    pass


class _Worker:
    """The parent's handle on one worker process."""

    def __init__(self, memory_bytes: int) -> None:
        program = "from modelport.chat_template_workers import worker_main; worker_main()"
        env = {k: v for k, v in os.environ.items() if k in _WORKER_ENV}  # no keys or tokens in a tenant's process
        self.proc = subprocess.Popen(
            [sys.executable, "-c", program, str(memory_bytes)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        self.fd = self.proc.stdout.fileno()  # type: ignore[union-attr]

    def call(self, payload: bytes, deadline_s: float, max_reply: int) -> dict[str, Any]:
        # The worker is always back in its read when a call starts (its last reply was read, or it was
        # replaced), so the write cannot block on a busy worker; only the reply needs the deadline.
        try:
            self.proc.stdin.write(_frame(payload))  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
        except OSError:
            raise _WorkerLost from None
        deadline = time.monotonic() + deadline_s
        (size,) = _FRAME.unpack(self._read(_FRAME.size, deadline))
        if size > max_reply:
            raise _WorkerLost
        reply: dict[str, Any] = json.loads(self._read(size, deadline))
        return reply

    def _read(self, n: int, deadline: float) -> bytes:
        chunks: list[bytes] = []
        while n:
            ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(self.fd, min(n, 1 << 20)) if ready else b""
            if not chunk:  # out of time, or the worker died (the kernel's limits, or killed)
                raise _WorkerLost
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


# --- the pool the API process uses ----------------------------------------------------------------------
def _setting(name: str) -> Any:
    from modelport.settings import Settings

    return Settings.model_fields[name].default


@dataclass(frozen=True)
class TemplateBudget:
    """What one render may take. Defaults are the settings' defaults."""

    seconds: float = field(default_factory=lambda: _setting("chat_template_timeout_s"))
    memory_bytes: int = field(default_factory=lambda: _setting("chat_template_memory_bytes"))
    workers: int = field(default_factory=lambda: _setting("chat_template_workers"))

    @classmethod
    def from_settings(cls, settings: Settings) -> TemplateBudget:
        return cls(
            settings.chat_template_timeout_s, settings.chat_template_memory_bytes, settings.chat_template_workers
        )


class TemplateRenderer:
    """Renders tenants' templates in worker processes under a ``TemplateBudget``; thread-safe.

    ``render`` blocks (admission, tests); ``arender`` waits on the event loop without holding a thread."""

    def __init__(self, budget: TemplateBudget | None = None) -> None:
        self.budget = budget or TemplateBudget()
        self._executor = ThreadPoolExecutor(self.budget.workers, thread_name_prefix="chat-template")
        self._local = threading.local()
        self._workers: set[_Worker] = set()
        self._lock = threading.Lock()
        self._shares = _Shares(max(1, self.budget.workers - 1))
        self._finalizer = weakref.finalize(self, _shutdown, self._executor, self._workers, self._lock)

    def render(
        self,
        template: str,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        max_chars: int = MAX_RENDERED_CHARS,
        **special_tokens: Any,
    ) -> str:
        job = self._job(template, messages, add_generation_prompt, max_chars, special_tokens)
        return self._executor.submit(job).result()

    async def arender(
        self,
        template: str,
        messages: list[dict[str, Any]],
        *,
        owner: str,
        add_generation_prompt: bool = True,
        max_chars: int = MAX_RENDERED_CHARS,
        **special_tokens: Any,
    ) -> str:
        """Like ``render``; ``owner`` (an account id) is held to its share of the workers."""
        job = self._job(template, messages, add_generation_prompt, max_chars, special_tokens)
        async with self._shares.slot(owner):
            return await asyncio.wrap_future(self._executor.submit(job))

    def close(self) -> None:
        self._finalizer()

    def _job(
        self, template: str, messages: list[dict[str, Any]], add_generation_prompt: bool, max_chars: int, specials: Any
    ) -> Callable[[], str]:
        if len(template.encode()) > MAX_TEMPLATE_BYTES:
            raise ChatTemplateError(f"the chat template is larger than {MAX_TEMPLATE_BYTES} bytes")
        request = {
            "template": template,
            "messages": messages,
            "add_generation_prompt": add_generation_prompt,
            "max_chars": max_chars,
            "specials": specials,
            "seconds": self.budget.seconds,
        }
        return lambda: self._render_in_worker(request, max_chars)

    def _render_in_worker(self, request: dict[str, Any], max_chars: int) -> str:
        payload = json.dumps(request).encode()
        worker = self._worker()
        try:
            # JSON escapes a character in at most 12 bytes (a surrogate pair as two \\uXXXX).
            reply = worker.call(payload, 2 * self.budget.seconds + _WALL_GRACE_S, 12 * max_chars + 4096)
        except _WorkerLost:
            self._retire(worker)
            raise TemplateBudgetError(
                f"the chat template did not finish within its budget ({self.budget.seconds:g} s of CPU time, "
                f"{self.budget.memory_bytes // 2**20} MiB of memory)"
            ) from None
        if "text" in reply:
            return str(reply["text"])
        if "budget" in reply:
            raise TemplateBudgetError(reply["budget"])
        raise ChatTemplateError(reply["error"])

    def _worker(self) -> _Worker:
        worker: _Worker | None = getattr(self._local, "worker", None)
        if worker is None or worker.proc.poll() is not None:
            if worker is not None:
                self._retire(worker)
            worker = self._local.worker = _Worker(self.budget.memory_bytes)
            with self._lock:
                self._workers.add(worker)
        return worker

    def _retire(self, worker: _Worker) -> None:
        worker.stop()
        self._local.worker = None
        with self._lock:
            self._workers.discard(worker)


def _shutdown(executor: ThreadPoolExecutor, workers: set[_Worker], lock: threading.Lock) -> None:
    executor.shutdown(wait=False, cancel_futures=True)
    with lock:
        for worker in list(workers):
            worker.stop()
        workers.clear()


class _Shares:
    """At most ``limit`` renders in flight per owner; the rest of the owner's renders wait their turn."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self._users: dict[str, int] = {}

    @asynccontextmanager
    async def slot(self, owner: str) -> AsyncIterator[None]:
        semaphore = self._semaphores.setdefault(owner, asyncio.Semaphore(self.limit))
        self._users[owner] = self._users.get(owner, 0) + 1
        try:
            async with semaphore:
                yield
        finally:
            self._users[owner] -= 1
            if not self._users[owner]:  # forget idle owners: the map stays as small as the traffic
                del self._users[owner], self._semaphores[owner]


_default_lock = threading.Lock()
_defaults: dict[int, TemplateRenderer] = {}


def default_renderer() -> TemplateRenderer:
    """A renderer with the default budget, one per process: for admission and callers without settings."""
    with _default_lock:
        renderer = _defaults.get(os.getpid())
        if renderer is None:
            renderer = _defaults[os.getpid()] = TemplateRenderer()
        return renderer
