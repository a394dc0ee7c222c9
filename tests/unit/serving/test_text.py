from __future__ import annotations

from pathlib import Path

import pytest

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
