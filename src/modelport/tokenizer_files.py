"""Reading a Hugging Face model folder's tokenizer side files, without transformers.

Shared by ingest (admission renders the chat template it finds here) and serving (which answers chat
with it), so the template that was checked at upload is the template that is served.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DEFAULT_TEMPLATE = "default"  # of several named templates, the one that answers chat


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; ``{}`` when the file is absent or holds something else."""
    if not path.is_file():
        return {}
    value = json.loads(path.read_text(encoding="utf-8"))
    return value if isinstance(value, dict) else {}


def find_chat_template(directory: Path) -> str | None:
    """The model's chat template, looked up in the order recent transformers and vLLM use:
    ``chat_template.jinja``, then ``chat_template.json``, then ``tokenizer_config.json``."""
    return chat_template_of({name: directory / name for name in TEMPLATE_FILES})


TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json", "tokenizer_config.json")  # in that order


def chat_template_of(files: Mapping[str, Path]) -> str | None:
    """``find_chat_template`` over files wherever they lie: their names in the model, to local paths."""
    jinja = files.get("chat_template.jinja")
    if jinja is not None and jinja.is_file():
        return jinja.read_text(encoding="utf-8", errors="replace")
    for name in ("chat_template.json", "tokenizer_config.json"):
        local = files.get(name)
        value = read_json(local).get("chat_template") if local is not None else None
        if value is not None:
            return _default_template(value)
    return None


def _default_template(value: Any) -> str | None:
    """A template is a string, or several named ones: a list of ``{"name", "template"}`` as
    ``save_pretrained`` writes them (or a name -> template mapping)."""
    if isinstance(value, list):
        value = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
    if isinstance(value, dict):
        value = value.get(DEFAULT_TEMPLATE)
    return value if isinstance(value, str) else None
