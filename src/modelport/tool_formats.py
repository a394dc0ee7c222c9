"""The formats models write tool calls in, and how a chat template shows which one a model uses.

Read at upload (``ingest/pipeline.py`` stores the format in the manifest), checked when an upload names
one (``catalog``), and used when answering (``serving/toolcalls.py`` parses each format).
"""

from __future__ import annotations

FORMATS: tuple[str, ...] = ("hermes", "llama3_json", "mistral")

HERMES_MARKERS = ("<tool_call>", "</tool_call>")
PYTHON_TAG = "<|python_tag|>"
MISTRAL_MARKER = "[TOOL_CALLS]"
# The tokens each format's calls are marked with: a tokenizer may hold them as special tokens, which
# decoding drops, so the detokenizer is told to keep them (``Detokenizer(keep=...)``).
MARKERS: dict[str, tuple[str, ...]] = {
    "hermes": HERMES_MARKERS,
    "llama3_json": (PYTHON_TAG,),
    "mistral": (MISTRAL_MARKER, "[ARGS]"),
}


def detect_format(chat_template: str | None) -> str | None:
    """Which format a chat template's tool calls take, read from the markers the template teaches.

    Hermes comes first: Hermes-style fine-tunes of Llama keep ``<tool_call>`` whatever the base model.
    """
    if not chat_template:
        return None
    if HERMES_MARKERS[0] in chat_template:
        return "hermes"
    if MISTRAL_MARKER in chat_template:
        return "mistral"
    if PYTHON_TAG in chat_template or "ipython" in chat_template:
        return "llama3_json"
    if "<|start_header_id|>" in chat_template and "tools" in chat_template:
        return "llama3_json"  # a Llama 3 template that renders tools but names neither marker
    return None
