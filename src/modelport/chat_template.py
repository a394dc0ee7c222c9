"""Chat templates are tenant-written Jinja: the sandbox they render in, with bounded output.

Shared by admission (which proves the template renders) and serving (which renders it per request).
``render`` runs in the calling process and bounds output and the obvious amplifiers only (``*``,
``+`` and ``**`` whose result would pass the output budget, Jinja's bounded ``range``); tenants'
templates are rendered through ``chat_template_workers.TemplateRenderer``, which runs this in worker
processes under a budget of time and memory.
"""

from __future__ import annotations

import json
import os
import threading
from contextvars import ContextVar
from functools import lru_cache
from typing import Any

from jinja2 import Template, TemplateError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_TEMPLATE_BYTES = 256 * 1024
MAX_RENDERED_CHARS = 4 * 2**20
MAX_INT_BITS = 1 << 16  # 65,536-bit integers: far beyond any template's arithmetic


class ChatTemplateError(ValueError):
    """The template failed or refused to render; the message says why."""


class TemplateBudgetError(ChatTemplateError):
    """The template went over its budget of time, memory or output."""


def _raise_exception(message: str) -> None:
    # Templates call raise_exception() to reject bad conversations (e.g. roles out of order).
    raise ChatTemplateError(message)


_max_chars: ContextVar[int] = ContextVar("max_chars", default=MAX_RENDERED_CHARS)
_SEQUENCES = (str, list, tuple)


class _BudgetedSandbox(ImmutableSandboxedEnvironment):
    """Refuses ``*``, ``+`` and ``**`` whose result would pass the output budget, before computing it."""

    intercepted_binops = frozenset({"*", "+", "**"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _check_binop(operator, left, right, _max_chars.get())
        return super().call_binop(context, operator, left, right)


def _check_binop(operator: str, left: Any, right: Any, limit: int) -> None:
    if isinstance(left, int) and isinstance(right, int):
        bits = left.bit_length() * right if operator == "**" and right > 0 else left.bit_length() + right.bit_length()
        if bits > MAX_INT_BITS:
            raise TemplateBudgetError(f"`{operator}` would build an integer of about {bits} bits")
        return
    size = 0
    if operator == "+" and isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
        size = len(left) + len(right)
    elif operator == "*" and isinstance(left, _SEQUENCES) and isinstance(right, int):
        size = len(left) * right
    elif operator == "*" and isinstance(right, _SEQUENCES) and isinstance(left, int):
        size = len(right) * left
    if size > limit:
        raise TemplateBudgetError(f"`{operator}` would build {size} items, more than the {limit} a prompt may hold")


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """transformers' ``tojson``, not Jinja's: no HTML escaping and keys in their order, so tools and
    tool-call arguments reach the prompt as the model saw them in training. A template's indent and
    separators are its author's: capped, so they cannot multiply the output's size."""
    if indent is not None and not 0 <= indent <= 16:
        raise TemplateBudgetError("tojson's indent must be between 0 and 16")
    if separators is not None and sum(len(s) for s in separators) > 8:
        raise TemplateBudgetError("tojson's separators may have at most 8 characters together")
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


_environment_lock = threading.Lock()
_environments: dict[int, _BudgetedSandbox] = {}


def _environment() -> _BudgetedSandbox:
    with _environment_lock:  # one per process (a forked child builds its own)
        env = _environments.get(os.getpid())
        if env is None:
            env = _BudgetedSandbox(trim_blocks=True, lstrip_blocks=True, autoescape=False)
            env.globals["raise_exception"] = _raise_exception
            env.filters["tojson"] = _tojson
            _environments[os.getpid()] = env
        return env


def render(
    template: str,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool = True,
    max_chars: int = MAX_RENDERED_CHARS,
    **special_tokens: Any,
) -> str:
    """Render in the sandbox, in this process; a fault becomes a ``ChatTemplateError`` with the reason.

    This bounds output and the obvious amplifiers only: serve tenants' templates through a
    ``chat_template_workers.TemplateRenderer``, which adds the time and memory budget."""
    return _render_compiled(_compile(template), messages, add_generation_prompt, max_chars, special_tokens)


def _compile(template: str) -> Template:
    if len(template.encode()) > MAX_TEMPLATE_BYTES:
        raise ChatTemplateError(f"the chat template is larger than {MAX_TEMPLATE_BYTES} bytes")
    return _compiled(template, os.getpid())


@lru_cache(maxsize=32)  # a few models' templates serve most requests; compiling one costs about 2 ms
def _compiled(template: str, pid: int) -> Template:
    try:
        return _environment().from_string(template)
    except TemplateError as e:
        raise ChatTemplateError(f"the chat template failed to compile: {type(e).__name__}: {e}") from None


def _render_compiled(
    compiled: Template, messages: list[dict[str, Any]], add_generation_prompt: bool, max_chars: int, specials: Any
) -> str:
    token = _max_chars.set(max_chars)
    parts: list[str] = []
    size = 0
    try:
        for part in compiled.generate(messages=messages, add_generation_prompt=add_generation_prompt, **specials):
            size += len(part)
            if size > max_chars:  # checked as the output grows, not after it is all built
                raise TemplateBudgetError(f"the chat template rendered more than {max_chars} characters")
            parts.append(part)
    except ChatTemplateError:
        raise
    except (TemplateError, TypeError, ValueError, KeyError, AttributeError, IndexError, RecursionError) as e:
        raise ChatTemplateError(f"the chat template failed to render: {type(e).__name__}: {e}") from None
    finally:
        _max_chars.reset(token)
    return "".join(parts)
