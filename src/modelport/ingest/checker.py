"""Validation and admission run in a short-lived child process.

Why a child: the checks import torch and transformers (hundreds of MB that a long-lived worker
should not carry), parse files an attacker wrote, and load weights into native code. A crash, a
hang or a memory spike there ends the child, never the worker; the job then fails with a reason.

Each check is a child of the server's fork server (``modelport/forkserver.py``, which the engine
processes are forked from too), which has torch and transformers imported already, so it starts in
milliseconds, and with an environment that holds no secret. Over a socket pair, in JSON lines, the
child reads its request, sends ``{"stage", "message"}`` as it goes, then one
``{"result": manifest, "derived": [files]}`` (the manifest's JSON form, ``Manifest.to_json``, and the files
the check wrote into the staging tree, encoded as the request's files are) or
``{"error": {"code", "message", "problems"}}``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from modelport import forkserver
from modelport.errors import IngestError
from modelport.ingest import admission, validate
from modelport.ingest.safetensors_header import TensorInfo, read_file_header
from modelport.ingest.staging import StagedFile, stage_existing
from modelport.manifest import Manifest, ModelKind


@dataclass
class BaseSpec:
    name: str
    manifest: Manifest
    directory: str
    tensors: dict[str, list[Any]]  # name -> [dtype, shape, start, end]


@dataclass
class CheckRequest:
    files: list[dict[str, Any]]  # path, size, sha256, local
    not_fetched: list[str]
    kind: str
    base_name: str | None
    base: BaseSpec | None
    max_bytes: int


@dataclass(frozen=True)
class Checked:
    """What a check hands back: the manifest, and the files it derived (a ``tokenizer.json`` built from
    the uploaded tokenizer files), staged next to the uploaded ones and listed in the manifest."""

    manifest: Manifest
    derived: list[StagedFile]


def encode_tensors(tensors: dict[str, TensorInfo]) -> dict[str, list[Any]]:
    return {k: [t.dtype, list(t.shape), t.start, t.end] for k, t in tensors.items()}


def _decode_tensors(raw: dict[str, list[Any]]) -> dict[str, TensorInfo]:
    return {k: TensorInfo(v[0], tuple(v[1]), v[2], v[3]) for k, v in raw.items()}


def request_for(
    files: list[StagedFile],
    not_fetched: list[str],
    kind: str,
    base_name: str | None,
    base: BaseSpec | None,
    max_bytes: int,
) -> CheckRequest:
    return CheckRequest([_encode_file(f) for f in files], not_fetched, kind, base_name, base, max_bytes)


def _encode_file(f: StagedFile) -> dict[str, Any]:
    return {"path": f.path, "size": f.size, "sha256": f.sha256, "local": str(f.local)}


def _decode_file(raw: dict[str, Any]) -> StagedFile:
    return StagedFile(raw["path"], raw["size"], raw["sha256"], Path(raw["local"]))


# ---- parent side ----------------------------------------------------------------------------------------


def warm_up() -> None:
    """Start the fork server now (it imports torch, seconds) rather than during the first job."""
    forkserver.warm_up()


def run_checks(request: CheckRequest, on_stage: Callable[[str, str], None], *, timeout_s: float) -> Checked:
    """Run the checks in a child process; returns what they found or raises the child's ``IngestError``."""
    ours, theirs = socket.socketpair()
    with ours:
        try:  # ForkFailed, a fork server that cannot start, is the server's failure: not an IngestError
            child = forkserver.server().fork(
                f"{__name__}:_child", [], env=forkserver.child_env({}), fds=[theirs.fileno()]
            )
        finally:
            theirs.close()  # the child's now: end-of-file here is the child's end
        deadline = time.monotonic() + timeout_s
        outcome: dict[str, Any] | None = None
        try:
            messages = _Lines(ours, deadline)
            messages.send(_encode_request(request))
            while outcome is None and (message := messages.next()) is not None:
                if "stage" in message:
                    on_stage(message["stage"], message["message"])
                else:
                    outcome = message
        finally:
            timed_out = outcome is None and time.monotonic() >= deadline
            if outcome is None and child.poll() is None:
                child.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(10)
    return _outcome(outcome, child.returncode, timed_out, timeout_s)


class _Lines:
    """JSON lines over a socket, each read within the check's deadline."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock, self.deadline, self.buffer = sock, deadline, b""

    def send(self, message: dict[str, Any]) -> None:
        self.sock.settimeout(max(0.001, self.deadline - time.monotonic()))
        # A child that died or stalled before it read its request: what it leaves behind says why.
        with contextlib.suppress(OSError):
            self.sock.sendall(json.dumps(message).encode() + b"\n")

    def next(self) -> dict[str, Any] | None:
        """The next message; None when the child has ended without one or the deadline has passed."""
        while b"\n" not in self.buffer:
            left = self.deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except (TimeoutError, OSError):
                return None
            if not chunk:  # the child died without a word
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        message: dict[str, Any] = json.loads(line)
        return message


def _encode_request(request: CheckRequest) -> dict[str, Any]:
    raw = asdict(request)
    if request.base is not None:
        raw["base"]["manifest"] = request.base.manifest.to_json()
    return raw


def _decode_request(raw: dict[str, Any]) -> CheckRequest:
    base = raw.get("base")
    spec = BaseSpec(**{**base, "manifest": Manifest.from_json(base["manifest"])}) if base else None
    return CheckRequest(**{**raw, "base": spec})


def _outcome(outcome: dict[str, Any] | None, exitcode: int | None, timed_out: bool, timeout_s: float) -> Checked:
    if outcome is not None and "result" in outcome:
        return Checked(Manifest.from_json(outcome["result"]), [_decode_file(f) for f in outcome["derived"]])
    if outcome is not None and "error" in outcome:
        e = outcome["error"]
        raise _error(e["code"], e["message"], e.get("problems", []))
    if timed_out:
        raise _error("check_timeout", f"checking the model took longer than {timeout_s:g} s and was stopped")
    how = f"signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exit status {exitcode}"
    raise _error(
        "check_crashed",
        f"the model checker crashed ({how}): the artifact may be malformed in a way that breaks native code",
    )


def _error(code: str, message: str, problems: list[str] | None = None) -> IngestError:
    error = IngestError(message, problems=problems or [])
    error.code = code
    return error


# ---- child side -----------------------------------------------------------------------------------------


def _child(fd: int) -> None:
    """Entry point of the forked checker (the fork server runs it): read the request, report stages,
    then the manifest or the error."""
    with socket.socket(fileno=fd) as conn:
        lines = _Lines(conn, time.monotonic() + 60.0)  # the request is sent at once

        def send(message: dict[str, Any]) -> None:
            conn.settimeout(None)
            conn.sendall(json.dumps(message).encode() + b"\n")

        raw = lines.next()
        if raw is None:
            return
        try:
            checked = check(_decode_request(raw), lambda stage, message: send({"stage": stage, "message": message}))
        except IngestError as e:
            send({"error": {"code": e.code, "message": e.message, "problems": e.problems}})
        else:
            send({"result": checked.manifest.to_json(), "derived": [_encode_file(f) for f in checked.derived]})


def check(request: CheckRequest, on_stage: Callable[[str, str], None]) -> Checked:
    files = [_decode_file(f) for f in request.files]
    base = request.base
    base_model = validate.BaseModel(base.name, base.manifest, _decode_tensors(base.tensors)) if base else None
    manifest = validate.validate(files, request.not_fetched, request.kind, base_model, request.base_name)
    # Before admission, whether or not it runs a forward pass: admission then loads what serving will.
    derived = _derive_tokenizer(request.kind, files, on_stage)
    manifest = manifest.with_files(validate.file_entries(files + derived))
    forward = (manifest if base is None else base.manifest).total_bytes
    on_stage(
        "admitting",
        "loading the model and running a one-token forward pass"
        if forward <= request.max_bytes
        else "checking the architecture against the weights",
    )
    candidate = admission.Candidate(_tree_root(files), manifest, _tensors(files))
    base_candidate = (
        admission.Candidate(Path(base.directory), base.manifest, _decode_tensors(base.tensors)) if base else None
    )
    report = admission.admit(candidate, max_bytes=request.max_bytes, base=base_candidate)
    return Checked(manifest.with_admission(report), derived)


def _derive_tokenizer(kind: str, files: list[StagedFile], on_stage: Callable[[str, str], None]) -> list[StagedFile]:
    """A model's ``tokenizer.json`` where it was uploaded without one, staged like the uploaded files.
    Not for adapters: they serve with their base model's tokenizer."""
    if kind == ModelKind.ADAPTER:
        return []
    root = _tree_root(files)
    written = admission.derive_tokenizer(root, {f.path for f in files})
    if written:
        added = " and ".join(written)
        on_stage("validating", f"added {added}, built by transformers from the uploaded tokenizer files")
    return [stage_existing(root, name) for name in written]


def _tree_root(files: list[StagedFile]) -> Path:
    """The directory that plays the archive root (after any flattening)."""
    first = files[0]
    return Path(str(first.local)[: -len(first.path)])


def _tensors(files: list[StagedFile]) -> dict[str, TensorInfo]:
    tensors: dict[str, TensorInfo] = {}
    for f in files:
        if f.path.endswith(".safetensors") and "/" not in f.path:
            tensors.update(read_file_header(str(f.local), f.size).tensors)
    return tensors
