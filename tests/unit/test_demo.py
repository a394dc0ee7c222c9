"""``modelport demo``: what it writes passes the server's own checks, the same bytes every time, offline."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from modelport import chat_template
from modelport.cli.main import cli
from modelport.demo import write_demo
from modelport.ingest.admission import Candidate, admit
from modelport.ingest.safetensors_header import TensorInfo, read_file_header
from modelport.ingest.staging import StagedFile, stage_existing
from modelport.ingest.validate import BaseModel, validate
from modelport.serving.text import load_text_model
from tests.support.tinymodels import files_of


def staged(root: Path) -> list[StagedFile]:
    return [stage_existing(root, p.relative_to(root).as_posix()) for p in sorted(root.rglob("*")) if p.is_file()]


def tensors(folder: Path, name: str) -> dict[str, TensorInfo]:
    return read_file_header(str(folder / name), (folder / name).stat().st_size).tensors


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo(tmp_path_factory.mktemp("demo")).model.parent


def test_the_demo_model_and_adapter_pass_validation_and_admission(demo: Path) -> None:
    """What the ingest checker runs on an upload (validate, then admit), on the two folders as written."""
    model, adapter = demo / "tiny-chat", demo / "tiny-lora"
    manifest = validate(staged(model), [], "model", None, None)
    assert manifest.type == "chat" and manifest.architecture == "LlamaForCausalLM"
    assert manifest.context_length == 1024 and manifest.total_bytes < 1_000_000
    admitted = admit(Candidate(model, manifest, tensors(model, "model.safetensors")), max_bytes=2**30)
    assert admitted.checked == "forward"

    base = BaseModel("admin/my-model", manifest, tensors(model, "model.safetensors"))
    lora = validate(staged(adapter), [], "adapter", base, base.name)
    adapter_info = {"peft_type": "LORA", "rank": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]}
    assert lora.to_json()["adapter"] == adapter_info
    base_candidate = Candidate(model, manifest, base.tensors)
    lora_candidate = Candidate(adapter, lora, tensors(adapter, "adapter_model.safetensors"))
    effect = admit(lora_candidate, max_bytes=2**30, base=base_candidate)
    assert effect.changed_modules == effect.target_modules == 4


def test_its_tokenizer_and_chat_template_serve_text(demo: Path) -> None:
    """The server's tokenizer loader reads it; the template renders in the sandbox; pieces decode to text."""
    text = load_text_model(demo / "tiny-chat")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]
    prompt = text.render_chat("my-model", messages)
    assert prompt == chat_template.render(text.chat_template or "", messages)
    assert prompt == "<|system|>Be brief.</s><|user|>Say hello</s><|assistant|>"
    ids = text.encode(prompt, special=False)
    assert text.tokenizer.token_to_id("<unk>") not in ids  # every ASCII character has a piece
    assert text.decode(ids) == "Be brief.Say hello"  # the role markers are special tokens
    assert text.eos_ids == {text.tokenizer.token_to_id("</s>")}
    # Any run of ids a random model might sample decodes to readable pieces of the built-in text.
    assert "\ufffd" not in text.decode(list(range(text.vocab_size)))


def test_it_writes_the_same_bytes_every_time(tmp_path: Path, demo: Path) -> None:
    again = write_demo(tmp_path / "again")
    for folder in ("tiny-chat", "tiny-lora"):
        assert files_of(again.model.parent / folder) == files_of(demo / folder)
    write_demo(tmp_path / "again")  # over itself: fine, and still the same
    assert files_of(again.model) == files_of(demo / "tiny-chat")


def test_the_command_prints_the_folders_and_what_to_run_next(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    first = CliRunner().invoke(cli, ["demo"])
    assert first.exit_code == 0, first.output
    assert first.stdout.splitlines() == ["./modelport-demo/tiny-chat", "./modelport-demo/tiny-lora"]
    assert "wrote ./modelport-demo/tiny-chat" in first.stderr
    assert "--model-source ./modelport-demo/tiny-lora --wait" in first.stderr
    second = CliRunner().invoke(cli, ["demo", str(tmp_path / "elsewhere"), "--json"])
    assert second.exit_code == 0 and '"adapter": "' + str(tmp_path / "elsewhere" / "tiny-lora") in second.stdout
    rerun = CliRunner().invoke(cli, ["demo"])
    assert rerun.exit_code == 0 and "rewrote ./modelport-demo/tiny-chat" in rerun.stderr
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "tiny-chat").write_text("a file where the model folder goes")
    refused = CliRunner().invoke(cli, ["demo", str(blocked)])
    assert refused.exit_code == 1 and "cannot write the demo into" in refused.stderr
    assert "Traceback" not in refused.output
