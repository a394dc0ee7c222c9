"""The command that uses a model, for the success lines that say what to run next.

A model's ``type`` (``GET /v1/models/{name}``) says how it answers: ``chat`` models have a chat
template, ``language`` models continue a prompt, ``embedding`` models turn text into vectors.
An adapter has its base model's type.
"""

from __future__ import annotations

from typing import Any

COMMANDS = {
    "chat": "modelport chat {name}",
    "language": "modelport complete {name} PROMPT",
    "embedding": "modelport embed {name} TEXT",
}


def next_step(model: dict[str, Any]) -> str:
    """The command to try ``model`` with, in backticks: ``model`` is the API's model object (or an
    endpoint's, with the endpoint's name as ``id``); an unknown type gets ``complete``, which any
    generative model answers."""
    command = COMMANDS.get(str(model.get("type")), COMMANDS["language"])
    return f"`{command.format(name=model['id'])}`"
