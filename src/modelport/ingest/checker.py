"""Validation and admission run in a short-lived child process.

Why a child: the checks import torch and transformers (hundreds of MB that a long-lived worker
should not carry), parse files an attacker wrote, and load weights into native code. A crash, a
hang or a memory spike there ends the child, never the worker; the job then fails with a reason.

Each check is a fork of a fork server that has torch and transformers imported already, so it
starts in milliseconds. The child sends ``{"stage", "message"}`` as it goes, then one
``{"result": manifest, "derived": [files]}`` (the manifest's JSON form, ``Manifest.to_json``, and the files
the check wrote into the staging tree, encoded as the request's files are) or
``{"error": {"code", "message", "problems"}}`` over a pipe.
"""

from __future__ import annotations

import functools
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

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

# The fork server imports these once; every check is a fresh fork of it, isolated but quick to start.
PRELOAD = [
    "modelport.ingest.checker",
    # Each child re-runs the parent's __main__ (the `modelport` script): make its imports free.
    "modelport.cli.main",
    "torch",
    "transformers",
    "transformers.models.auto.modeling_auto",
    "transformers.models.auto.configuration_auto",
    "peft",
    "safetensors",
]


@functools.cache
def _context() -> Any:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def warm_up() -> None:
    """Start the fork server now (it imports torch, seconds) rather than during the first job."""
    child = _context().Process(target=_noop, name="modelport-check-warmup", daemon=True)
    child.start()
    child.join()


def _noop() -> None:
    pass


def run_checks(request: CheckRequest, on_stage: Callable[[str, str], None], *, timeout_s: float) -> Checked:
    """Run the checks in a child process; returns what they found or raises the child's ``IngestError``."""
    receiver, sender = _context().Pipe(duplex=False)
    child = _context().Process(target=_child, args=(asdict(request), sender), name="modelport-check", daemon=True)
    child.start()
    sender.close()
    deadline = time.monotonic() + timeout_s
    outcome: dict[str, Any] | None = None
    try:
        while outcome is None and receiver.poll(max(0.0, deadline - time.monotonic())):
            try:
                message = receiver.recv()
            except EOFError:  # the child died without a word
                break
            if "stage" in message:
                on_stage(message["stage"], message["message"])
            else:
                outcome = message
    finally:
        timed_out = outcome is None and time.monotonic() >= deadline
        if child.is_alive() and (timed_out or outcome is None):
            child.kill()
        child.join(10)
        receiver.close()
    return _outcome(outcome, child.exitcode, timed_out, timeout_s)


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


def _child(raw: dict[str, Any], conn: Connection) -> None:
    """Entry point of the forked checker: report stages, then the manifest or the error."""
    base = BaseSpec(**raw["base"]) if raw.get("base") else None
    request = CheckRequest(**{**raw, "base": base})
    try:
        checked = check(request, lambda stage, message: conn.send({"stage": stage, "message": message}))
    except IngestError as e:
        conn.send({"error": {"code": e.code, "message": e.message, "problems": e.problems}})
    else:
        conn.send({"result": checked.manifest.to_json(), "derived": [_encode_file(f) for f in checked.derived]})
    finally:
        conn.close()


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
