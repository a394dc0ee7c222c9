"""Which files of a model folder or repo modelport keeps, and what kind of artifact their names say it is.

One set of rules for every place that chooses files before any byte moves: the Hugging Face fetch plan,
the CLI's packer (it sends only these files) and the preflight check (it reads the kind from the names).
Imports nothing heavy: the CLI uses it.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from pathlib import PurePosixPath

# What serving needs: configs, weights, tokenizers, chat templates. Everything else (README, images,
# ONNX exports, pickled duplicates of the weights) is left behind.
WANTED_SUFFIXES = (".json", ".safetensors", ".model", ".txt", ".jinja", ".tiktoken")
SKIP_NAMES = {"README.md", ".gitattributes", "LICENSE", "LICENSE.txt", "requirements.txt"}
# Not kept, but named so validation can explain why the artifact is refused.
REPORTED_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt", ".py")
MAX_DEPTH = 3
# What the server says of refused files (``validate.py``); the CLI says the same before an upload.
PICKLE_REFUSED = (
    "{}: pickle weight formats (.bin/.pt/.pth/.pkl/.ckpt) can run code when loaded and are refused; convert "
    "to safetensors (e.g. `model.save_pretrained(dir, safe_serialization=True)`) and remove the pickle files"
)
CODE_REFUSED = "{}: custom Python code is refused; modelport only serves architectures built into transformers"


class FileRole(StrEnum):
    KEEP = "keep"
    REPORT = "report"  # refused content (pickles, code): listed so the refusal can name it
    SKIP = "skip"


def file_role(path: str) -> FileRole:
    p = PurePosixPath(path)
    if p.name in SKIP_NAMES or len(p.parts) > MAX_DEPTH:
        return FileRole.SKIP
    # Sub-folders of sentence-transformers repos (1_Pooling/, 2_Normalize/) hold small configs only.
    in_root_or_module = len(p.parts) == 1 or p.parts[0][:1].isdigit()
    if p.suffix in WANTED_SUFFIXES and in_root_or_module:
        return FileRole.KEEP
    if p.suffix in REPORTED_SUFFIXES:
        return FileRole.REPORT
    return FileRole.SKIP


def archive_format(head: bytes) -> str | None:
    """``zip``, ``tar.gz`` or ``tar`` from an archive's first bytes (at least 262 for tar), never from its
    name; None for anything else. The server unpacks by this, and the CLI sends only what passes it."""
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "tar.gz"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    return None


def detect_kind(paths: Iterable[str]) -> str | None:
    """``"adapter"`` when ``adapter_config.json`` is at the root, ``"model"`` for ``config.json``, else None.

    PEFT saves an adapter with ``adapter_config.json`` and no ``config.json``; a folder holding both is
    a full model that happens to ship its adapter config, as merged checkpoints sometimes do.
    """
    names = {p for p in paths if "/" not in p}
    if "config.json" in names:
        return "model"
    if "adapter_config.json" in names:
        return "adapter"
    return None
