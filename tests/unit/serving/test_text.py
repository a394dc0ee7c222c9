from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from modelport.demo import train_tokenizer
from modelport.errors import TemplateMissing
from modelport.serving.text import Detokenizer, load_text_model
from tests.support.tinymodels import WORDS, make_llama


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_llama(tmp_path_factory.mktemp("text") / "m", chat=False)


def ids(*words: str) -> list[int]:
    return [4 + WORDS.index(w) for w in words]


def test_stop_strings_are_held_back_then_cut(folder: Path) -> None:
    text = load_text_model(folder)
    detok = Detokenizer(text, ids("hello"), stop=["paris is"])
    sent = [detok.add(t, last=False) for t in ids("the", "capital", "paris", "is", "world")]
    assert "".join(sent) == " the capital " and detok.stopped
    assert "paris" not in sent[2]  # it might begin the stop string: held back


def test_whole_text_comes_out_at_the_end(folder: Path) -> None:
    text = load_text_model(folder)
    detok = Detokenizer(text, ids("hello"), stop=["zzz"])
    words = ids("a", "b", "c")
    sent = "".join(detok.add(t, last=i == len(words) - 1) for i, t in enumerate(words))
    assert sent == " a b c"


def test_chat_needs_a_template(folder: Path) -> None:
    with pytest.raises(TemplateMissing, match="no chat template"):
        load_text_model(folder).render_chat("acme/plain", [{"role": "user", "content": "hi"}])
    assert load_text_model(folder).eos_ids == frozenset({2})


class Counted:
    """A real tokenizer's ``decode``, counting how many token ids it was asked to decode in all."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer, self.decoded = tokenizer, 0

    def decode(self, ids: list[int]) -> str:
        self.decoded += len(ids)
        return str(self.tokenizer.decode(ids))


def _byte_level() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(["héllo wörld, naïve café", "日本語のテキスト", "emoji 🙂🚀 done"], trainer=trainer)
    return tok


TEXT = "Say héllo to the naïve café: 日本語のテキスト and 🙂🚀 twice, the quick brown fox. " * 20


@pytest.mark.parametrize("make", [_byte_level, train_tokenizer], ids=["byte-level", "metaspace"])
def test_incremental_text_equals_decoding_everything_in_linear_work(make: Any) -> None:
    counted = Counted(make())
    ids = counted.tokenizer.encode(TEXT).ids
    prompt, completion = ids[:5], ids[5:]
    detok = Detokenizer(counted, prompt, stop=[])  # type: ignore[arg-type]
    counted.decoded = 0
    deltas = [detok.add(t, last=i == len(completion) - 1) for i, t in enumerate(completion)]
    assert "".join(deltas) == counted.decode(prompt + completion)[len(counted.decode(prompt)) :]
    assert all("\ufffd" not in d for d in deltas)  # a character split across tokens waits for its end
    assert counted.decoded < 40 * len(completion)  # a window per token, not everything so far
