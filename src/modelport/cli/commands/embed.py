"""``modelport embed``: text to vectors with an embedding model, through ``POST /v1/embeddings``."""

from __future__ import annotations

import math
import sys
from typing import Any

import click

from modelport.cli.base import AppContext, connection_options, pass_app

SHOWN_VALUES = 4
SHOWN_CHARS = 40


@click.command()
@click.argument("model")
@click.argument("texts", nargs=-1, metavar="TEXT...")
@connection_options
@pass_app
def embed(app: AppContext, model: str, texts: tuple[str, ...]) -> None:
    """Embed each TEXT with an embedding model (without TEXT, each line piped in).

    Prints each vector's dimensions, norm and first values; with --json, the API's answer, vectors included.
    """
    inputs = list(texts) or _piped_lines()
    if not inputs:
        raise click.UsageError("give the text to embed: modelport embed MODEL TEXT...")
    result = app.client().embed({"model": model, "input": inputs})
    if app.json:
        return app.output.json(result)
    rows = [summary(inputs[item["index"]], item["embedding"], item["index"]) for item in result["data"]]
    app.output.table(("#", "TEXT", "DIMENSIONS", "NORM", "FIRST VALUES"), rows, empty="No vectors came back.")


def _piped_lines() -> list[str]:
    if sys.stdin.isatty():
        return []
    return [line.strip() for line in sys.stdin if line.strip()]


def summary(text: str, vector: list[float], index: int = 0) -> tuple[Any, ...]:
    """One table row: which input, its start, the vector's dimensions, norm and first values."""
    shown = text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"
    values = ", ".join(f"{v:+.4f}" for v in vector[:SHOWN_VALUES])
    more = ", …" if len(vector) > SHOWN_VALUES else ""
    norm = math.sqrt(sum(v * v for v in vector))
    return index, shown, len(vector), f"{norm:.4f}", f"[{values}{more}]"
