"""Model names: one spelling per name, nothing path-like, and never a part of a file path."""

from __future__ import annotations

import pytest

from modelport.catalog.names import qualify
from modelport.errors import InvalidModelName

pytestmark = pytest.mark.db_agnostic


@pytest.mark.parametrize(
    ("raw", "full"),
    [
        ("llama-3.1-8b_ft", "alice/llama-3.1-8b_ft"),
        ("alice/my.model", "alice/my.model"),
        ("  padded  ", "alice/padded"),
        ("ｆｕｌｌｗｉｄｔｈ", "alice/fullwidth"),  # NFKC: one spelling per name
        ("ﬁne-tune", "alice/fine-tune"),  # the "fi" ligature
        ("a" * 100, "alice/" + "a" * 100),
    ],
)
def test_accepted_names_are_normalised(raw: str, full: str) -> None:
    assert qualify("alice", raw) == full


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "a" * 101,
        "..",
        "../etc/passwd",
        "alice/../bob/x",
        "x..y",
        ".hidden",
        "-flag",
        "a/b/c",
        "alice/x/y",
        "a\\b",
        "..\\..\\windows",
        "a b",
        "a\x00b",
        "a\nb",
        "%2e%2e",
        "modèle",  # letters outside ASCII would give look-alike names
        "аlice",  # Cyrillic a
        "x\u200by",  # zero-width space
        "／etc",  # fullwidth solidus normalises to "/": still refused
        "．．",  # fullwidth dots normalise to ".."
    ],
)
def test_path_like_and_ambiguous_names_are_refused(raw: str) -> None:
    with pytest.raises(InvalidModelName):
        qualify("alice", raw)


def test_names_are_made_only_in_ones_own_namespace() -> None:
    with pytest.raises(InvalidModelName, match="not your account"):
        qualify("alice", "bob/model")
    with pytest.raises(InvalidModelName, match="not your account"):
        qualify("alice", "ａｌｉｃｅx/model")
