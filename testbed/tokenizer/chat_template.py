"""Render a model's own Jinja chat template the way Hugging Face transformers does: a
sandboxed environment with `trim_blocks`/`lstrip_blocks`, loop controls, a non-escaping
`tojson`, and the `raise_exception` / `strftime_now` helpers templates call."""
from __future__ import annotations

import copy
import json
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(ValueError):
    """The template rejected the conversation (its `raise_exception`) or failed to render."""


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(f"chat template: {message}")


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                      separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=8)
def compile_template(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(f"chat template line {e.lineno}: {e.message}") from None


def render_chat_template(source: str, messages: list[dict], *, add_generation_prompt: bool = True,
                         tools: list[dict] | None = None, special_tokens: dict[str, str] | None = None,
                         **extra: Any) -> str:
    """The prompt text for `messages` (dicts with `role` and `content`).

    `special_tokens` (`bos_token`, `eos_token`, ...) and `extra` become template variables,
    as transformers passes them.
    """
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            raise ChatTemplateError(f"messages[{i}]: expected a dict with a 'role', got {message!r}")
    template = compile_template(source)
    variables = {**(special_tokens or {}), **extra}
    try:
        return template.render(messages=copy.deepcopy(messages), tools=copy.deepcopy(tools),
                               documents=None, add_generation_prompt=add_generation_prompt,
                               **variables)
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"chat template: {e}") from None
