"""Model names: one spelling per name, nothing path-like, and never a part of a file path."""

from __future__ import annotations

import pytest

from modelport.catalog.names import qualify
from modelport.errors import InvalidModelName
from modelport.storage.db.tables import model_name_key

pytestmark = pytest.mark.db_agnostic


@pytest.mark.parametrize(
    ("raw", "full"),
    [
        ("llama-3.1-8b_ft", "alice/llama-3.1-8b_ft"),
        ("alice/my.model", "alice/my.model"),
        ("  padded  ", "alice/padded"),
        ("\uff46\uff55\uff4c\uff4c\uff57\uff49\uff44\uff54\uff48", "alice/fullwidth"),  # NFKC: one spelling per name
        ("\ufb01ne-tune", "alice/fine-tune"),  # the "fi" ligature
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
        "mod\u00e8le",  # letters outside ASCII would give look-alike names
        "\u0430lice",  # Cyrillic a
        "x\u200by",  # zero-width space
        "\uff0fetc",  # fullwidth solidus normalises to "/": still refused
        "\uff0e\uff0e",  # fullwidth dots normalise to ".."
    ],
)
def test_path_like_and_ambiguous_names_are_refused(raw: str) -> None:
    with pytest.raises(InvalidModelName):
        qualify("alice", raw)


def test_names_are_made_only_in_ones_own_namespace() -> None:
    with pytest.raises(InvalidModelName, match="not your account"):
        qualify("alice", "bob/model")
    with pytest.raises(InvalidModelName, match="not your account"):
        qualify("alice", "\uff41\uff4c\uff49\uff43\uff45x/model")


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("alice/MyModel", "alice/mymodel"),
        ("alice/MYMODEL", "alice/mymodel"),
        ("alice/\uff2d\uff59\uff2d\uff4f\uff44\uff45\uff4c", "alice/mymodel"),  # fullwidth
        ("alice/caf\u00e9", "alice/cafe\u0301"),  # NFC and NFD: one name (qualify refuses both, rows may not)
        ("alice/Stra\u00dfe", "alice/strasse"),  # full case folding, not just lower()
    ],
)
def test_names_differing_only_by_case_or_form_share_a_key(one: str, other: str) -> None:
    assert model_name_key(one) == model_name_key(other)


def test_different_names_keep_different_keys() -> None:
    keys = {model_name_key(n) for n in ("alice/model-1", "alice/model_1", "alice/model.1", "bob/model-1")}
    assert len(keys) == 4
