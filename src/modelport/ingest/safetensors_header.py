"""A bounded, pure-Python reader for safetensors headers, run before any library touches the file.

Layout: 8 bytes little-endian header length N, N bytes of JSON, then the tensor data. We check what
a hostile file could lie about: the header size, the JSON, duplicate names, dtypes, shapes against
byte ranges, and that the ranges tile the data area exactly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MAX_HEADER_BYTES = 100 * 2**20
DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


class SafetensorsError(ValueError):
    pass


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Header:
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise SafetensorsError(f"the header names tensor {key!r} twice")
        out[key] = value
    return out


def parse_header(read: Callable[[int, int], bytes], file_size: int) -> Header:
    """``read(start, length)`` returns bytes of the file; only the header is ever read."""
    if file_size < 8:
        raise SafetensorsError("the file is shorter than a safetensors header")
    n = int.from_bytes(read(0, 8), "little")
    if n > MAX_HEADER_BYTES or 8 + n > file_size:
        raise SafetensorsError(f"the header claims {n} bytes, beyond the file or the {MAX_HEADER_BYTES} cap")
    try:
        raw = json.loads(read(8, n), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"the header is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise SafetensorsError("the header is not a JSON object")
    metadata = raw.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise SafetensorsError("__metadata__ must map strings to strings")
    tensors = {name: _tensor(name, spec) for name, spec in raw.items()}
    _check_tiling(tensors, file_size - 8 - n)
    return Header(tensors, metadata)


def _tensor(name: str, spec: Any) -> TensorInfo:
    if not isinstance(spec, dict):
        raise SafetensorsError(f"tensor {name!r}: entry is not an object")
    dtype, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise SafetensorsError(f"tensor {name!r}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise SafetensorsError(f"tensor {name!r}: shape must be a list of non-negative integers")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise SafetensorsError(f"tensor {name!r}: data_offsets must be two ascending integers")
    info = TensorInfo(dtype, tuple(shape), offsets[0], offsets[1])
    if info.numel * DTYPE_BYTES[dtype] != info.end - info.start:
        raise SafetensorsError(
            f"tensor {name!r}: shape {shape} of {dtype} needs {info.numel * DTYPE_BYTES[dtype]} bytes "
            f"but its offsets span {info.end - info.start}"
        )
    return info


def _check_tiling(tensors: dict[str, TensorInfo], data_size: int) -> None:
    position = 0
    for name, t in sorted(tensors.items(), key=lambda kv: (kv[1].start, kv[1].end)):
        if t.start != position:
            problem = "overlaps the previous tensor" if t.start < position else "leaves a gap before it"
            raise SafetensorsError(f"tensor {name!r} {problem} (offset {t.start}, expected {position})")
        position = t.end
    if position != data_size:
        raise SafetensorsError(f"the tensors cover {position} bytes but the data area holds {data_size}")


def read_file_header(path: str, file_size: int) -> Header:
    with open(path, "rb") as f:

        def read(start: int, length: int) -> bytes:
            f.seek(start)
            return f.read(length)

        return parse_header(read, file_size)
