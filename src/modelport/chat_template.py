"""Chat templates are user-supplied Jinja: render them only in a sandbox, with bounded output.

Shared by admission (which proves the template renders) and serving (which renders it per request).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_TEMPLATE_BYTES = 256 * 1024
MAX_RENDERED_CHARS = 4 * 2**20


class ChatTemplateError(ValueError):
    pass


def _raise_exception(message: str) -> None:
    # Templates call raise_exception() to reject bad conversations (e.g. roles out of order).
    raise ChatTemplateError(message)


@cache
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, autoescape=False)
    env.globals["raise_exception"] = _raise_exception
    return env


def render(
    template: str, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True, **special_tokens: Any
) -> str:
    """Render in the sandbox; any template fault becomes a ``ChatTemplateError`` with the reason."""
    if len(template.encode()) > MAX_TEMPLATE_BYTES:
        raise ChatTemplateError(f"the chat template is larger than {MAX_TEMPLATE_BYTES} bytes")
    try:
        compiled = _environment().from_string(template)
        out = compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, **special_tokens)
    except ChatTemplateError:
        raise
    except (TemplateError, TypeError, ValueError, KeyError, AttributeError, IndexError) as e:
        raise ChatTemplateError(f"the chat template failed to render: {type(e).__name__}: {e}") from None
    if len(out) > MAX_RENDERED_CHARS:
        raise ChatTemplateError("the chat template rendered an absurdly long prompt")
    return out
