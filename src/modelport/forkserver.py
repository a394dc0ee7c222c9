"""The fork server: the processes that run torch (admission checks, engines) start in milliseconds.

Admission checks (``ingest/checker.py``) and engine processes (``serving/host.py``) need torch and
transformers imported before they do anything: seconds of CPU each time. The fork server is one
process per server (or ``modelport worker``) that imports them once and then forks a child per check
and per engine process. A child runs one function, named by ``"module:function"``, with the string
arguments and the file descriptors it was sent; it is isolated as a program of its own would be: its
own memory, its output where it was told (an engine's log), the environment it was given.

The fork server is started with ``child_env({})`` and so holds no secret: neither it nor its children
(which parse files a tenant wrote, and run the models) ever have the database URL, API keys, hub tokens
or storage credentials in their memory. It runs no torch code itself (forking a process whose thread
pools have started is unsafe). It lives exactly as long as its server: its stdin is a pipe from the
server, and at end-of-file it kills its children and exits; a child whose fork server is killed
outright notices within a second (it watches its parent).

One connection per child, over a Unix socket in a private folder, in JSON lines:

    server → fork server   {"target", "args", "env", "log"}, with the child's descriptors attached
    fork server → server   {"pid": N}, then {"exit": code}     ``code`` as Popen's returncode
    server → fork server   one byte, a signal number           to signal the child

Signals go through the fork server because it reaps the child: it signals only a process that has not
been reaped, so a pid that was freed and reused is never signalled.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

# What the children run, imported before the first fork so that none of them imports it again.
PRELOAD = (
    # Admission checks: validation, the meta-device build, the forward pass, adapters.
    "modelport.ingest.checker",
    "torch",
    "transformers",
    "transformers.models.auto.configuration_auto",
    "transformers.models.auto.modeling_auto",
    "peft",
    "safetensors",
    # Engines. modeling_utils: every model's first load imports it, and torch's compiler with it (seconds).
    "modelport.serving.host",
    "modelport.serving.ipc",
    "modelport.serving.engines.fake",
    "modelport.serving.engines.torch.engine",
    "transformers.modeling_utils",
)
START_TIMEOUT_S = 600.0  # how long a fork may wait for a new fork server's imports

# What a child inherits of the server's environment: how to run Python and the native libraries, and
# their tuning. Not MODELPORT_* (its settings come otherwise), and no credentials (AWS_*, HF_TOKEN, the
# database URL): a model or an archive that runs code it should not finds nothing to steal.
_ENV_NAMES = frozenset({"PATH", "HOME", "USER", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ", "PYTHONPATH"})
_ENV_PREFIXES = ("CUDA_", "NVIDIA_", "OMP_", "MKL_", "KMP_", "GOMP_", "OPENBLAS_", "TORCH_", "PYTORCH_", "LD_")


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The environment of a child: the allowed part of ours, ``extra`` on top."""
    kept = {k: v for k, v in os.environ.items() if k in _ENV_NAMES or k.startswith(_ENV_PREFIXES)}
    # Nothing there may reach a hub: models are local folders.
    return {**kept, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **extra}


class ForkFailed(Exception):
    """The fork server could not start a child: it failed to start itself, or died."""


def _line(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode() + b"\n"


# --- the server's side ------------------------------------------------------------------------------
class Forked:
    """A child of the fork server, watched through the connection that asked for it: what
    ``subprocess.Popen`` offers of a child (``pid``, ``poll``, ``wait``, ``terminate``, ``kill``)."""

    def __init__(self, sock: socket.socket, pid: int, buffered: bytes = b"") -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._sock = sock
        self._buffer = buffered  # what came after the pid: its end, for a child that ended at once
        self._lock = threading.Lock()  # one thread polls while another terminates

    def poll(self) -> int | None:
        with self._lock:
            if self.returncode is None:
                self._read(0.0)
            return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = time.monotonic() + timeout if timeout is not None else None
        while True:
            with self._lock:  # in short slices: ``poll`` from another thread must not wait for this
                if self.returncode is None:
                    self._read(0.1 if deadline is None else min(0.1, max(0.0, deadline - time.monotonic())))
                if self.returncode is not None:
                    return self.returncode
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"child {self.pid}", timeout or 0.0)

    def send_signal(self, signum: int) -> None:
        with self._lock:
            if self.returncode is None:
                with contextlib.suppress(OSError):  # the fork server is gone, and the child with it
                    self._sock.sendall(bytes([signum]))

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def _read(self, timeout: float) -> None:
        self._sock.settimeout(timeout)
        try:
            chunk = self._sock.recv(4096)
        except (BlockingIOError, TimeoutError):
            return
        except OSError:
            chunk = b""
        if not chunk:  # the fork server ended without a word: it killed its children as it went
            self._ended(-signal.SIGKILL)
            return
        self._buffer += chunk
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            message = json.loads(line)
            if "exit" in message:
                self._ended(int(message["exit"]))

    def _ended(self, code: int) -> None:
        self.returncode = code
        self._sock.close()


class ForkServer:
    """One fork server process."""

    def __init__(self, preload: Sequence[str] = PRELOAD) -> None:
        self._folder = Path(tempfile.mkdtemp(prefix="modelport-forkserver-"))  # 0700: ours only
        self.path = self._folder / "fork.sock"
        # Its output is the server's: an import that fails is in the server's log. Its stdin is how it
        # knows the server is alive.
        command = [sys.executable, "-m", "modelport.forkserver", str(self.path), *preload]
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, env=child_env({}))

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def fork(
        self,
        target: str,
        args: Sequence[str],
        *,
        env: Mapping[str, str],
        log: Path | None = None,
        fds: Sequence[int] = (),
        timeout: float = START_TIMEOUT_S,
    ) -> Forked:
        """Start ``target(*args, *fds)`` in a child; its output goes to ``log`` (else the server's).
        Waits while a new fork server imports (seconds, once), at most ``timeout``."""
        request = {"target": target, "args": list(args), "env": dict(env), "log": str(log) if log else None}
        deadline = time.monotonic() + timeout
        sock = self._connect(deadline)
        try:
            socket.send_fds(sock, [_line(request)], list(fds))
            return Forked(sock, *self._pid(sock, deadline))
        except BaseException:
            sock.close()
            raise

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()  # it kills its children and exits
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:  # still importing: it reads its stdin only once that is done
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self._folder, ignore_errors=True)

    def _connect(self, deadline: float) -> socket.socket:
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(self.path))
                return sock
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
            if not self.alive:
                raise ForkFailed(f"the fork server exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise ForkFailed("the fork server did not start in time")
            time.sleep(0.01)

    def _pid(self, sock: socket.socket, deadline: float) -> tuple[int, bytes]:
        buffer = b""
        while b"\n" not in buffer:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                raise ForkFailed("the fork server did not answer in time") from None
            if not chunk:
                raise ForkFailed("the fork server ended before it started the process")
            buffer += chunk
        line, rest = buffer.split(b"\n", 1)
        return int(json.loads(line)["pid"]), rest


_server: ForkServer | None = None
_server_lock = threading.Lock()


def server() -> ForkServer:
    """This process's fork server, started here (or again, after it died): every check and every engine
    process of the server are its children."""
    global _server
    with _server_lock:
        if _server is None or not _server.alive:
            if _server is not None:
                _server.close()
            _server = ForkServer()
        return _server


def warm_up() -> None:
    """Start the fork server and wait for its imports (seconds), rather than in the first job or request."""
    server().fork("modelport.forkserver:nothing", [], env=child_env({})).wait()


def nothing() -> None:
    """A child that does nothing: ``warm_up``'s."""


# --- the fork server's side -------------------------------------------------------------------------
class _Server:
    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        self.children: dict[int, socket.socket | None] = {}  # pid -> where to say it ended, if anyone listens
        self.wake_r, self.wake_w = os.pipe()
        for fd in (self.wake_r, self.wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so that the wakeup fd hears of it

    def run(self) -> None:
        try:
            while self._step():
                pass
        finally:
            for pid in self.children:  # not reaped: the pid is still theirs
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def _step(self) -> bool:
        poller = select.poll()
        conns = {c.fileno(): (pid, c) for pid, c in self.children.items() if c is not None}
        for fd in (0, self.wake_r, self.listener.fileno(), *conns):
            poller.register(fd, select.POLLIN)
        ready = {fd for fd, _ in poller.poll()}
        if 0 in ready and not os.read(0, 4096):
            return False  # the server is gone
        if self.wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(self.wake_r, 4096):
                    pass
            self._reap()
        if self.listener.fileno() in ready:
            self._accept()
        for fd in ready & conns.keys():
            self._signal(*conns[fd])
        return True

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            if conn is not None:
                with contextlib.suppress(OSError):
                    conn.sendall(_line({"exit": os.waitstatus_to_exitcode(status)}))
                conn.close()

    def _accept(self) -> None:
        conn, _ = self.listener.accept()
        pid, fds = 0, list[int]()
        try:
            conn.settimeout(10.0)
            request, fds = _read_request(conn)
            pid = self._fork(request, fds, conn)
            conn.sendall(_line({"pid": pid}))
        except Exception:
            traceback.print_exc()
            conn.close()
            if pid:  # no one would watch it
                os.kill(pid, signal.SIGKILL)
            return
        finally:
            for fd in fds:  # the child's now
                os.close(fd)
        self.children[pid] = conn

    def _signal(self, pid: int, conn: socket.socket) -> None:
        try:
            data = conn.recv(64)
        except OSError:
            data = b""
        if not data:  # its watcher let go of it: it runs on, and is reaped unannounced
            conn.close()
            self.children[pid] = None
            return
        for signum in data:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)  # not reaped yet (``_reap`` drops it first): the pid is the child's

    def _fork(self, request: dict[str, Any], fds: list[int], conn: socket.socket) -> int:
        sys.stdout.flush()  # what is buffered would be written twice
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self._become(request, fds, conn)
        return pid

    def _become(self, request: dict[str, Any], fds: list[int], conn: socket.socket) -> NoReturn:
        """In the child: drop the fork server's state, then run the target until it returns."""
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for signum in (signal.SIGCHLD, signal.SIGTERM):
                signal.signal(signum, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)  # what Python starts with
            for fd in (self.wake_r, self.wake_w):
                os.close(fd)
            # The server's connections are the fork server's to answer: a child holding one would hide
            # the fork server's end from the server.
            for held in [self.listener, conn, *self.children.values()]:
                if held is not None:
                    held.close()
            _redirect(Path(request["log"]) if request["log"] else None)
            os.environ.clear()
            os.environ.update(request["env"])
            _thread_share()
            module, _, function = str(request["target"]).partition(":")
            getattr(importlib.import_module(module), function)(*request["args"], *fds)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)


def _read_request(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """The request line and the descriptors that came with its first bytes."""
    buffer, fds, _, _ = socket.recv_fds(conn, 65536, 16)
    while not buffer.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("the request ended early")
        buffer += chunk
    return json.loads(buffer), fds


def _redirect(log: Path | None) -> None:
    """stdin from /dev/null (not the fork server's pipe); stdout and stderr to ``log``, if given."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    if log is not None:
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)


def _thread_share() -> None:
    """torch read OMP_NUM_THREADS when the fork server imported it: a child's own share is set here."""
    torch = sys.modules.get("torch")
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if torch is not None and threads.isdigit() and int(threads) > 0:
        torch.set_num_threads(int(threads))


def _listen(path: Path) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    umask = os.umask(0o177)  # born 0600, in a 0700 folder
    try:
        listener.bind(str(path))
    finally:
        os.umask(umask)
    listener.listen(64)
    return listener


def main(argv: Sequence[str]) -> None:
    """``python -m modelport.forkserver SOCKET MODULE...``: listen first (a request waits in the backlog
    while the modules import), import, then fork on request until the server is gone."""
    path = Path(argv[0])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle: it stops us (stdin)
    listener = _listen(path)
    try:
        for name in argv[1:]:
            importlib.import_module(name)
        # From now on it lives exactly as long as the server: its stdin says when. A SIGTERM sent to the
        # whole process group stops the children and the server; were this process to go too, the server
        # would start another one, importing torch again, while it shuts down. Until now, a SIGTERM ends
        # it: a server shutting down does not wait for imports it no longer needs.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _Server(listener).run()
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
