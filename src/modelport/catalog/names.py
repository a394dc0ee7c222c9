"""Model names: ``<account>/<name>``, validated once here and never used to build a file path.

``qualify`` gives each name one spelling (NFKC, ASCII only). Names that still differ only by case
(``alice/MyModel``, ``alice/mymodel``) are one name: the catalog compares them by
``storage.db.tables.model_name_key``, under a unique index, and refuses the second with 409
``model_name_taken``. Lookups keep using the spelling the model was created with.
"""

from __future__ import annotations

import re
import unicodedata

from modelport.errors import InvalidModelName

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def qualify(account: str, raw: str) -> str:
    """Turn what the user typed into the full name, refusing anything ambiguous or path-like."""
    name = unicodedata.normalize("NFKC", raw.strip())
    if "/" in name:
        prefix, _, name = name.partition("/")
        if prefix != account:
            raise InvalidModelName(
                f"model names are created in your own namespace ({account}/...); {prefix!r} is not your account",
                param="model_name",
            )
    if not _NAME.match(name) or ".." in name:
        raise InvalidModelName(
            "model_name must be 1-100 characters of letters, digits, '.', '_' and '-', start with a letter "
            "or digit, and contain no '..'",
            param="model_name",
        )
    return f"{account}/{name}"
