"""``modelport chat`` (interactive, streaming) and ``modelport complete``."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from modelport.cli.base import AppContext, connection_options, pass_app
from modelport.cli.client import ApiError, Client
from modelport.cli.errors import explain
from modelport.cli.output import Output

F = TypeVar("F", bound=Callable[..., Any])
SAMPLING = ("temperature", "top_p", "top_k", "max_tokens", "seed", "repetition_penalty")
HELP = "Type a message and press Enter. /reset forgets the conversation; /exit or Ctrl-D leaves."


def sampling_options(f: F) -> F:
    options = [
        click.option("--temperature", type=float, default=None, help="0 picks the likeliest token (greedy)."),
        click.option("--top-p", type=float, default=None),
        click.option("--top-k", type=int, default=None),
        click.option("--max-tokens", type=int, default=None, help="Longest reply, in tokens."),
        click.option("--seed", type=int, default=None, help="Same seed, same sampled reply."),
        click.option("--repetition-penalty", type=float, default=None),
        click.option("--stop", multiple=True, help="Stop when this text appears (repeatable)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _sampling(opts: dict[str, Any]) -> dict[str, Any]:
    body = {k: opts[k] for k in SAMPLING if opts.get(k) is not None}
    if opts.get("stop"):
        body["stop"] = list(opts["stop"])
    return body


@click.command()
@click.argument("model")
@click.option("--system", default=None, help="A system message that starts the conversation.")
@click.option("--message", "-m", "messages", multiple=True, help="Send this message, print the reply, and exit.")
@sampling_options
@connection_options
@pass_app
def chat(app: AppContext, /, model: str, system: str | None, messages: tuple[str, ...], **opts: Any) -> None:
    """Chat with a model, adapter or endpoint; replies stream as they are generated.

    Reads one message per line from the terminal (or from a pipe). With --message, sends just those.
    """
    client, out = app.client(), app.output
    history = [{"role": "system", "content": system}] if system else []
    body = {"model": model, **_sampling(opts)}
    if messages:
        return _one_shot(app, client, body, history, messages)
    tty = sys.stdin.isatty()
    if tty:
        import readline  # noqa: F401  (line editing and history for input())

        out.message(f"Chatting with {model}. {HELP}")
    _converse(client, out, body, history, tty)


def _one_shot(
    app: AppContext, client: Client, body: dict[str, Any], history: list[Any], texts: tuple[str, ...]
) -> None:
    history = [*history, *({"role": "user", "content": t} for t in texts)]
    if app.json:
        return app.output.json(client.chat({**body, "messages": history}))
    _reply(client, app.output, {**body, "messages": history})


def _converse(client: Client, out: Output, body: dict[str, Any], history: list[dict[str, str]], tty: bool) -> None:
    start = list(history)
    while (line := _read(tty)) is not None:
        text = line.strip()
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            history[:] = start
            out.message("(conversation cleared)")
        elif text == "/help":
            out.message(HELP)
        elif text:
            history.append({"role": "user", "content": text})
            reply = _turn(client, out, {**body, "messages": history})
            history.append({"role": "assistant", "content": reply}) if reply is not None else history.pop()


def _read(tty: bool) -> str | None:
    try:
        return input(">>> ") if tty else input()
    except (EOFError, KeyboardInterrupt):
        if tty:
            sys.stderr.write("\n")  # leave the shell's prompt on a line of its own
        return None


def _turn(client: Client, out: Output, body: dict[str, Any]) -> str | None:
    """One reply; a refused request is explained and the conversation goes on without it."""
    try:
        return _reply(client, out, body)
    except ApiError as e:
        why = explain(e)
        out.error(why.message if why else e.message, why.hint if why else None)
        return None
    except KeyboardInterrupt:  # stop this reply; closing the stream frees its slot on the server
        out.text("\n")
        out.message("(reply interrupted)")
        return None


def _reply(client: Client, out: Output, body: dict[str, Any]) -> str:
    parts = []
    for chunk in client.chat_stream(body):
        out.text(chunk)
        parts.append(chunk)
    out.text("\n")
    return "".join(parts)


@click.command()
@click.argument("model")
@click.argument("prompt")
@sampling_options
@connection_options
@pass_app
def complete(app: AppContext, /, model: str, prompt: str, **opts: Any) -> None:
    """Continue PROMPT with a model (no chat template), streaming the text."""
    client, out = app.client(), app.output
    body = {"model": model, "prompt": prompt, **_sampling(opts)}
    if app.json:
        return out.json(client.complete(body))
    for chunk in client.complete_stream(body):
        out.text(chunk)
    out.text("\n")
