"""Validation reports every problem at once and describes good artifacts in a manifest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from modelport.errors import ValidationFailed
from modelport.ingest.safetensors_header import read_file_header
from modelport.ingest.staging import StagedFile, stage_existing
from modelport.ingest.validate import BaseModel, validate
from tests.support.tinymodels import make_bert_embedder, make_llama, make_lora


def staged(root: Path) -> list[StagedFile]:
    return [stage_existing(root, p.relative_to(root).as_posix()) for p in sorted(root.rglob("*")) if p.is_file()]


def problems(
    files: list[StagedFile],
    kind: str = "model",
    base: BaseModel | None = None,
    not_fetched: list[str] | None = None,
) -> list[str]:
    with pytest.raises(ValidationFailed) as err:
        validate(files, not_fetched or [], kind, base, base.name if base else None)
    return err.value.problems


def base_of(model: Path) -> BaseModel:
    manifest = validate(staged(model), [], "model", None, None)
    header = read_file_header(str(model / "model.safetensors"), (model / "model.safetensors").stat().st_size)
    return BaseModel("alice/base", manifest, header.tensors)


def test_a_good_model_gets_a_full_manifest(tiny_llama: Path) -> None:
    manifest = validate(staged(tiny_llama), [], "model", None, None)
    assert manifest.kind == "model" and manifest.type == "chat"
    assert manifest.architecture == "LlamaForCausalLM" and manifest.model_type == "llama"
    assert manifest.dtype == "F32" and manifest.context_length == 128
    vocab = 18  # 4 special tokens + 14 words
    assert manifest.parameters == vocab * 16 * 2 + 16 + 2 * (4 * 16 * 16 + 3 * 16 * 32 + 2 * 16)
    assert all(len(f.sha256) == 64 for f in manifest.files)


def test_without_chat_template_it_is_a_language_model(tmp_path: Path) -> None:
    assert validate(staged(make_llama(tmp_path / "m", chat=False)), [], "model", None, None).type == "language"


def test_embedding_models_are_recognised(tmp_path: Path) -> None:
    manifest = validate(staged(make_bert_embedder(tmp_path / "e")), [], "model", None, None)
    assert manifest.type == "embedding" and manifest.context_length == 32


def test_every_problem_is_reported_at_once(tmp_path: Path, tiny_llama: Path) -> None:
    model = tmp_path / "m"
    shutil.copytree(tiny_llama, model)
    (model / "tokenizer.json").unlink()
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "x.Y"}
    config["architectures"] = ["EvilForCausalLM"]
    (model / "config.json").write_text(json.dumps(config))
    (model / "pytorch_model.bin").write_bytes(b"pickle")
    (model / "modeling_x.py").write_text("import os")
    found = " | ".join(problems(staged(model)))
    for expected in (
        "pytorch_model.bin",
        "convert to safetensors",
        "modeling_x.py",
        "auto_map",
        "EvilForCausalLM is not built into transformers",
    ):
        assert expected in found, (expected, found)


def test_missing_config_weights_and_tokenizer(tmp_path: Path, tiny_llama: Path) -> None:
    model = tmp_path / "m"
    shutil.copytree(tiny_llama, model)
    for name in ("model.safetensors", "tokenizer.json"):
        (model / name).unlink()
    found = " | ".join(problems(staged(model)))
    assert "no weights" in found and "no tokenizer" in found
    (model / "config.json").unlink()
    assert any("config.json is missing" in p for p in problems(staged(model)))


def test_pickles_left_on_the_hub_are_still_reported(tmp_path: Path) -> None:
    model = make_llama(tmp_path / "m")
    (model / "model.safetensors").unlink()
    found = " | ".join(problems(staged(model), not_fetched=["pytorch_model.bin"]))
    assert "pytorch_model.bin" in found and "no weights" in found


def test_broken_shard_index_and_bad_json(tmp_path: Path, tiny_llama: Path) -> None:
    model = tmp_path / "m"
    shutil.copytree(tiny_llama, model)
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-00002.safetensors"}}))
    (model / "tokenizer_config.json").write_text("{oops")
    found = " | ".join(problems(staged(model)))
    assert "model-00002.safetensors, which is missing" in found and "tokenizer_config.json: not valid JSON" in found


def test_a_matching_adapter_passes(tiny_llama: Path, tiny_lora: Path) -> None:
    manifest = validate(staged(tiny_lora), [], "adapter", base_of(tiny_llama), "base")
    assert manifest.kind == "adapter" and manifest.base_model == "alice/base"
    assert manifest.to_json()["adapter"] == {
        "peft_type": "LORA",
        "rank": 4,
        "alpha": 8,
        "target_modules": ["q_proj", "v_proj"],
    }
    assert manifest.type == "chat"


def test_adapter_problems(tmp_path: Path, tiny_llama: Path) -> None:
    other = make_llama(tmp_path / "other", hidden=32, heads=4, kv_heads=4)
    lora = make_lora(tmp_path / "lora", other, targets=("q_proj", "k_proj"))
    config = json.loads((lora / "adapter_config.json").read_text())
    config |= {"peft_type": "IA3", "use_dora": True, "modules_to_save": ["lm_head"]}
    (lora / "adapter_config.json").write_text(json.dumps(config))
    found = " | ".join(problems(staged(lora), "adapter", base_of(tiny_llama)))
    assert "only LORA" in found and "do not fit the base weight" in found
    assert "DoRA (use_dora) is not supported" in found and "modules_to_save" in found
    (lora / "adapter_model.safetensors").unlink()
    assert any(
        "adapter_model.safetensors is missing" in p for p in problems(staged(lora), "adapter", base_of(tiny_llama))
    )


def test_adapter_without_a_known_base(tiny_lora: Path) -> None:
    with pytest.raises(ValidationFailed) as err:
        validate(staged(tiny_lora), [], "adapter", None, "nope")
    assert "base model 'nope' is not one of your models" in err.value.problems[0]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("num_hidden_layers", 10**9),
        ("hidden_size", -1),
        ("vocab_size", "many"),
        ("max_position_embeddings", True),
    ],
)
def test_absurd_config_sizes_are_refused_before_any_allocation(
    tmp_path: Path, tiny_llama: Path, key: str, value: object
) -> None:
    model = tmp_path / "m"
    shutil.copytree(tiny_llama, model)
    config = json.loads((model / "config.json").read_text())
    config[key] = value
    (model / "config.json").write_text(json.dumps(config))
    assert any(f"{key} = {value!r}" in p for p in problems(staged(model)))


def test_a_config_far_bigger_than_its_weights_is_refused(tmp_path: Path, tiny_llama: Path) -> None:
    model = tmp_path / "m"
    shutil.copytree(tiny_llama, model)
    config = json.loads((model / "config.json").read_text())
    config["hidden_size"], config["intermediate_size"] = 4096, 11008
    (model / "config.json").write_text(json.dumps(config))
    assert any("the config does not belong to these weights" in p for p in problems(staged(model)))


def test_custom_tokenizer_code_and_oversized_tokenizers_are_refused(tmp_path: Path, tiny_llama: Path) -> None:
    model = tmp_path / "m"
    shutil.copytree(tiny_llama, model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["tok.Evil", None]}
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    with open(model / "tokenizer.json", "r+b") as f:
        f.truncate(65 * 2**20)  # sparse: no real 65 MiB written
    found = " | ".join(problems(staged(model)))
    assert "custom tokenizer code" in found and "tokenizer.json: 68157440 bytes is larger" in found
