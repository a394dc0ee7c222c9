"""Uploads whose tokenizer comes without tokenizer.json: ingest stores one that transformers derived, so
the server (which reads tokenizer.json with the ``tokenizers`` library only) can serve them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, BertConfig, BertModel

from modelport.accounts.service import Principal
from modelport.catalog.service import JobView
from modelport.demo import CORPUS, llama_config, write_llama
from modelport.services import Services
from modelport.serving.text import TextModel, load_text_model
from tests.conftest import make_settings, open_services, principal_for
from tests.integration.helpers import stored_blobs, upload
from tests.support.fakehub import FakeHub
from tests.support.tinymodels import files_of, make_bert_embedder, make_llama

# What ingest writes and serving reads back: the same on either database.
pytestmark = pytest.mark.db_agnostic

TEXTS = ["hello world", "The capital of France is Paris.", "  naïve café, 日本語 🙂  ", "a [MASK] b [SEP] c", ""]
ENDOFTEXT = "<|endoftext|>"


@pytest.fixture
def small_budget(tmp_path: Path, db_url: str, hub: FakeHub) -> Iterator[Services]:
    """Admission checks structure only: the derivation must not depend on the forward pass."""
    svc = open_services(make_settings(tmp_path, db_url, hub.url, admission_max_bytes=1000))
    yield svc
    svc.db.dispose()


def _bert_embedder(path: Path) -> Path:
    """``make_bert_embedder`` (a vocab.txt tokenizer), with every weight of its BertModel: it writes the
    word embeddings only, which admission refuses."""
    make_bert_embedder(path)
    torch.manual_seed(0)
    weights = BertModel(BertConfig.from_pretrained(path)).state_dict()
    save_file({k: v.contiguous() for k, v in weights.items()}, str(path / "model.safetensors"))
    return path


def _gpt2_style(path: Path) -> Path:
    """A Llama whose tokenizer is a byte-level BPE saved the GPT-2 way: vocab.json and merges.txt."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=[ENDOFTEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    eos = tok.token_to_id(ENDOFTEXT)
    assert eos is not None
    sizes = {"hidden": 16, "layers": 1, "heads": 2, "kv_heads": 2, "intermediate": 32}
    config = llama_config(tok.get_vocab_size(), bos_id=eos, eos_id=eos, **sizes)
    tok_config = {"tokenizer_class": "GPT2Tokenizer"} | {f"{k}_token": ENDOFTEXT for k in ("bos", "eos", "unk")}
    write_llama(path, tok, tok_config, config)
    (path / "tokenizer.json").unlink()
    tok.model.save(str(path))  # vocab.json, merges.txt
    return path


def _served(services: Services, who: Principal, name: str) -> Path:
    """The model's folder as serving materializes it: from its file rows and the blob store."""
    model = services.catalog.get_model(who, name)
    return services.artifacts.get(model, services.catalog.files(model)).path


def _assert_encodes_like_transformers(ours: TextModel, original: Path) -> None:
    ref = AutoTokenizer.from_pretrained(original, trust_remote_code=False)
    assert ours.vocab_size == len(ref)
    for text in TEXTS:
        for special in (True, False):
            assert ours.encode(text, special=special) == ref.encode(text, add_special_tokens=special), (text, special)
        ids = ref.encode(text)
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True), text


def _upload(services: Services, hub: FakeHub, model: Path, repo: str, name: str) -> tuple[Principal, JobView]:
    hub.add(repo, files_of(model))
    who = principal_for(services, "alice")
    return who, upload(services, who, name, repo)


@pytest.mark.parametrize("budget", ["forward", "meta"])
def test_a_vocab_txt_embedder_is_stored_with_a_derived_tokenizer_json(
    request: pytest.FixtureRequest, hub: FakeHub, tmp_path: Path, budget: str
) -> None:
    services: Services = request.getfixturevalue("services" if budget == "forward" else "small_budget")
    bert = _bert_embedder(tmp_path / "bert")
    assert not (bert / "tokenizer.json").exists() and not (bert / "tokenizer_config.json").exists()
    who, view = _upload(services, hub, bert, f"org/bert-{budget}", "bert")
    assert view.job.status == "Complete", [u.message for u in view.updates]
    assert any("added tokenizer.json and tokenizer_config.json" in u.message for u in view.updates)
    manifest = services.catalog.get_model(who, "bert").manifest
    assert manifest is not None and manifest.type == "embedding"
    assert manifest.admission is not None and manifest.admission.checked == budget
    paths = {f.path for f in manifest.files}
    assert paths == set(files_of(bert)) | {"tokenizer.json", "tokenizer_config.json"}
    assert manifest.total_bytes == sum(f.size for f in manifest.files)
    assert {f.path for f in services.catalog.files(services.catalog.get_model(who, "bert"))} == paths
    assert {f.sha256 for f in manifest.files} == stored_blobs(services)
    folder = _served(services, who, "bert")
    for entry in manifest.files:  # what serving reads is what the manifest describes
        assert hashlib.sha256((folder / entry.path).read_bytes()).hexdigest() == entry.sha256
    _assert_encodes_like_transformers(load_text_model(folder), bert)


def test_a_gpt2_style_tokenizer_gets_tokenizer_json_and_keeps_its_config(
    services: Services, hub: FakeHub, tmp_path: Path
) -> None:
    model = _gpt2_style(tmp_path / "gpt2-style")
    who, view = _upload(services, hub, model, "org/gpt2-style", "gpt2-style")
    assert view.job.status == "Complete", [u.message for u in view.updates]
    manifest = services.catalog.get_model(who, "gpt2-style").manifest
    assert manifest is not None and manifest.admission is not None and manifest.admission.checked == "forward"
    assert {f.path for f in manifest.files} == set(files_of(model)) | {"tokenizer.json"}
    folder = _served(services, who, "gpt2-style")
    # The uploaded tokenizer_config.json is kept as it was, not replaced by what transformers would write.
    assert (folder / "tokenizer_config.json").read_bytes() == (model / "tokenizer_config.json").read_bytes()
    text = load_text_model(folder)
    assert text.special_tokens["eos"] == ENDOFTEXT
    _assert_encodes_like_transformers(text, model)


def test_a_model_with_tokenizer_json_is_stored_as_uploaded(
    services: Services, alice: Principal, hub: FakeHub, tiny_llama: Path
) -> None:
    files = files_of(tiny_llama)
    hub.add("org/has-tokenizer-json", files)
    view = upload(services, alice, "as-uploaded", "org/has-tokenizer-json")
    assert view.job.status == "Complete"
    assert not any("added tokenizer" in u.message for u in view.updates)
    manifest = services.catalog.get_model(alice, "as-uploaded").manifest
    assert manifest is not None
    expected = {path: (len(data), hashlib.sha256(data).hexdigest()) for path, data in files.items()}
    assert {f.path: (f.size, f.sha256) for f in manifest.files} == expected
    assert manifest.total_bytes == sum(len(data) for data in files.values())


def _without_tokenizer_json(tmp_path: Path, name: str) -> Path:
    model = make_llama(tmp_path / name)
    (model / "tokenizer.json").unlink()
    return model


def _edit_tokenizer_config(model: Path, **changes: Any) -> None:
    path = model / "tokenizer_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


@pytest.mark.parametrize("case", ["unreadable", "slow only"])
def test_a_tokenizer_that_cannot_be_made_fast_is_refused(
    services: Services, hub: FakeHub, tmp_path: Path, case: str
) -> None:
    model = _without_tokenizer_json(tmp_path, case.replace(" ", "-"))
    if case == "unreadable":  # not a SentencePiece model, or one that needs the sentencepiece package
        (model / "tokenizer.model").write_bytes(b"\x0a\x05hello")
        why = "builds no fast tokenizer"
    else:  # transformers has this tokenizer only as Python code; the server could not run it
        (model / "vocab.txt").write_text("a\n")
        _edit_tokenizer_config(model, tokenizer_class="ByT5Tokenizer")
        why = "only as a slow ByT5Tokenizer"
    who, view = _upload(services, hub, model, f"org/{case.replace(' ', '-')}", "no-fast")
    assert view.job.status == "Failed" and view.job.error_code == "admission_failed", view.job.error_message
    message = view.job.error_message or ""
    assert "no tokenizer.json" in message and why in message and "tokenizer.save_pretrained" in message
    assert services.catalog.list_models(who) == [] and stored_blobs(services) == set()
    assert not list(services.settings.staging_dir.iterdir())


def test_an_embedder_without_tokenizer_files_is_refused(services: Services, hub: FakeHub, tmp_path: Path) -> None:
    bert = make_bert_embedder(tmp_path / "bert")
    (bert / "vocab.txt").unlink()
    _, view = _upload(services, hub, bert, "org/bert-no-tokenizer", "bert")
    assert view.job.status == "Failed" and view.job.error_code == "validation_failed"
    assert "no tokenizer: a text-generation or embedding model needs tokenizer.json" in (view.job.error_message or "")
