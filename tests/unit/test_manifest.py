"""The artifact manifest: old rows read, the JSON form keeps the stored keys, and defaults live in one place."""

from __future__ import annotations

import ast
import copy
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

import modelport.manifest
from modelport.endpoints.hardware import estimate_bytes
from modelport.manifest import (
    DEFAULT_CONTEXT_LENGTH,
    AdmissionReport,
    Manifest,
    ModelKind,
    ModelType,
    context_length_of,
)
from modelport.storage.db.tables import Base, Model

FILES = [
    {"path": "config.json", "size": 600, "sha256": "a" * 64},
    {"path": "model.safetensors", "size": 4096, "sha256": "b" * 64},
]
MODEL_ROW: dict[str, Any] = {
    "files": FILES,
    "total_bytes": 4696,
    "kind": "model",
    "model_type": "llama",
    "architecture": "LlamaForCausalLM",
    "type": "chat",
    "parameters": 1024,
    "dtype": "F32",
    "context_length": None,
    "admission": {"checked": "forward", "tokens": 2, "output_shape": [1, 2, 18], "ms": 41},
}
ADAPTER_ROW: dict[str, Any] = {
    "files": FILES[:1],
    "total_bytes": 600,
    "kind": "adapter",
    "adapter": {"peft_type": "LORA", "rank": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
    "base_model": "alice/base",
    "type": "language",
    "architecture": "LlamaForCausalLM",
    "model_type": "llama",
    "context_length": 128,
    "parameters": 512,
    "dtype": "BF16",
    "admission": {"checked": "forward", "tokens": 2, "target_modules": 4, "changed_modules": 4, "ms": 7},
}
# Written before admission existed, and trimmed further: every key but ``kind`` may be missing.
OLD_ROW: dict[str, Any] = {"files": FILES, "total_bytes": 4696, "kind": "model", "type": "embedding"}


def test_an_old_row_with_missing_keys_reads() -> None:
    manifest = Manifest.from_json(OLD_ROW)
    assert manifest.kind is ModelKind.MODEL and manifest.type is ModelType.EMBEDDING
    assert manifest.files[1].path == "model.safetensors" and manifest.files[1].size == 4096
    assert manifest.admission is None and manifest.adapter is None and manifest.context_length is None
    assert manifest.context_length_or_default == DEFAULT_CONTEXT_LENGTH
    assert "admission" not in manifest.to_json()


@pytest.mark.parametrize("row", [MODEL_ROW, ADAPTER_ROW], ids=["model", "adapter"])
def test_the_json_form_keeps_the_stored_keys_and_values(row: dict[str, Any]) -> None:
    written = Manifest.from_json(copy.deepcopy(row)).to_json()
    assert written == row
    assert json.loads(json.dumps(written)) == row  # plain JSON: enums are their wire strings


def test_absent_keys_stay_absent_and_known_nulls_stay_null() -> None:
    written = Manifest.from_json(MODEL_ROW).to_json()
    assert "adapter" not in written and "base_model" not in written
    assert written["context_length"] is None  # the config named none: stored as null, as always
    meta = AdmissionReport(checked="meta", reason="too big", ms=3)
    assert meta.model_dump() == {"checked": "meta", "reason": "too big", "ms": 3}


def test_the_kinds_and_types_are_the_stored_strings() -> None:
    assert [k.value for k in ModelKind] == ["model", "adapter"]
    assert {t.value for t in ModelType} == {"chat", "language", "embedding"}
    assert ModelKind.ADAPTER == "adapter" and Manifest.from_json(ADAPTER_ROW).is_adapter


def test_the_column_stores_the_json_form_and_reads_old_rows() -> None:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    common = {"account_id": "account-1", "kind": "model", "status": "ready", "source_kind": "url", "source": "x"}
    with Session(engine) as s:
        s.execute(text("PRAGMA foreign_keys=OFF"))
        s.add(Model(id="model-new", name="a/new", manifest=Manifest.from_json(MODEL_ROW), **common))
        s.add(Model(id="model-none", name="a/none", **common))
        s.commit()
        s.execute(text("UPDATE models SET manifest = :m WHERE id = 'model-none'"), {"m": json.dumps(OLD_ROW)})
        s.commit()
        stored = s.execute(text("SELECT manifest FROM models WHERE id = 'model-new'")).scalar_one()
        assert json.loads(stored) == MODEL_ROW
        s.expire_all()
        old = s.get(Model, "model-none")
        assert old is not None and old.manifest == Manifest.from_json(OLD_ROW)


def test_the_default_context_length_comes_from_one_place(monkeypatch: pytest.MonkeyPatch) -> None:
    config = {"num_hidden_layers": 1, "num_attention_heads": 1, "hidden_size": 1}
    unknown = Manifest(kind=ModelKind.MODEL, parameters=0)
    monkeypatch.setattr(modelport.manifest, "DEFAULT_CONTEXT_LENGTH", 4096)
    assert unknown.context_length_or_default == 4096 and context_length_of(None) == 4096
    assert estimate_bytes(unknown, config, 1) == int(2 * 4096 * 1.2)
    assert Manifest(kind=ModelKind.MODEL, context_length=128).context_length_or_default == 128


def test_the_manifest_module_is_a_leaf() -> None:
    """Ingest, catalog, storage, serving and the edges all import it: it imports none of them."""
    tree = ast.parse(Path(modelport.manifest.__file__).read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert {n for n in names if n.startswith("modelport")} <= {"modelport.errors", "modelport.settings"}
