from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from modelport.ingest.safetensors_header import SafetensorsError, read_file_header


def _raw(header: object, data: bytes = b"", raw_json: bytes | None = None) -> bytes:
    blob = raw_json if raw_json is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + data


def _parse(tmp_path: Path, blob: bytes) -> object:
    p = tmp_path / "w.safetensors"
    p.write_bytes(blob)
    return read_file_header(str(p), len(blob))


def test_files_written_by_the_library_parse(tmp_path: Path) -> None:
    p = tmp_path / "ok.safetensors"
    save_file({"a": np.zeros((2, 3), np.float32), "b": np.ones(4, np.int64)}, str(p), metadata={"k": "v"})
    header = read_file_header(str(p), p.stat().st_size)
    assert header.tensors["a"].shape == (2, 3) and header.tensors["b"].dtype == "I64"
    assert header.metadata == {"k": "v"}


@pytest.mark.parametrize(
    ("blob", "match"),
    [
        (b"\x01\x02", "shorter"),
        (struct.pack("<Q", 10**12) + b"{}", "beyond the file"),
        (_raw(None, raw_json=b"{not json"), "not valid JSON"),
        (
            _raw(
                None,
                raw_json=b'{"a": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}, '
                b'"a": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}}',
                data=b"\0" * 4,
            ),
            "twice",
        ),
        (_raw({"a": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}}, b"\0" * 16), "unknown dtype"),
        (_raw({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8), "needs 12 bytes"),
        (
            _raw(
                {
                    "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                    "b": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]},
                },
                b"\0" * 6,
            ),
            "overlaps",
        ),
        (_raw({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8), "gap"),
        (_raw({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 9), "data area holds 9"),
        (_raw({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4), "non-negative"),
        (_raw([1, 2]), "not a JSON object"),
    ],
)
def test_hostile_headers_are_refused(tmp_path: Path, blob: bytes, match: str) -> None:
    with pytest.raises(SafetensorsError, match=match):
        _parse(tmp_path, blob)
