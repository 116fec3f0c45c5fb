"""OpenAI request bodies in, validated generation requests out.

`parse_completion` and `parse_chat` turn the JSON body of `POST /v1/completions` and
`POST /v1/chat/completions` into a `GenerationRequest`, or raise `APIError`: an HTTP status
plus the OpenAI error body, naming the offending parameter. Nothing here touches the engine,
so every rule is testable on its own.

Supported besides the OpenAI parameters: `top_k` (0 or -1 = off) and `ignore_eos`, as vLLM
takes them. Parameters that would change the output in ways this server does not implement
(`n` > 1, penalties, logprobs, echo, tools...) are refused rather than ignored.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from testbed.request import SamplingParams
from testbed.tokenizer import ChatTemplateError, Tokenizer

MAX_TEMPERATURE = 2.0  # the OpenAI API's range is [0, 2]


class APIError(ValueError):
    """A request the server refuses, as the OpenAI API reports it."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 status: int = 400, type: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.code, self.status, self.type = message, param, code, status, type

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


@dataclass(frozen=True, slots=True)
class ModelCard:
    """What validation needs to know about the served model.

    `context_len` is the most tokens (prompt + output) one request may hold: the smaller of
    the scheduler's `max_model_len` and the KV pool's capacity.
    """

    name: str
    context_len: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]


@dataclass(slots=True)
class GenerationRequest:
    """One validated request: prompt tokens and how to continue them."""

    prompt_token_ids: list[int]
    prompt_text: str | None  # the text that was tokenized (None for a token-id prompt)
    max_tokens: int
    sampling: SamplingParams
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool


# Parameters accepted only at the value that asks for nothing this server lacks.
_NEUTRAL = {"n": (None, 1), "best_of": (None, 1), "presence_penalty": (None, 0),
            "frequency_penalty": (None, 0), "echo": (None, False), "suffix": (None, ""),
            "logit_bias": (None, {}), "logprobs": (None, False), "top_logprobs": (None, 0),
            "parallel_tool_calls": (None, True, False), "tools": (None, []),
            "tool_choice": (None, "none")}
_COMMON = {"model", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stream",
           "stream_options", "ignore_eos", "user", "n", "presence_penalty", "frequency_penalty",
           "logit_bias", "logprobs"}
COMPLETION_PARAMS = _COMMON | {"prompt", "echo", "suffix", "best_of"}
CHAT_PARAMS = _COMMON | {"messages", "max_completion_tokens", "top_logprobs", "response_format",
                         "tools", "tool_choice", "parallel_tool_calls"}


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise APIError(f"the request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(f"the request body must be a JSON object, got {type(body).__name__}",
                       code="invalid_json")
    return body


def parse_completion(body: Mapping[str, Any], card: ModelCard, tokenizer: Tokenizer
                     ) -> GenerationRequest:
    """Validate a `/v1/completions` body (`prompt`: text, token ids, or a list of one)."""
    _check_common(body, card, COMPLETION_PARAMS)
    ids, text = _prompt(body.get("prompt"), card, tokenizer)
    return _generation(body, card, ids, text, "prompt", _int_param(body, "max_tokens", 1))


def parse_chat(body: Mapping[str, Any], card: ModelCard, tokenizer: Tokenizer
               ) -> GenerationRequest:
    """Validate a `/v1/chat/completions` body; the prompt is the model's chat template
    applied to `messages`, with the assistant's turn opened."""
    _check_common(body, card, CHAT_PARAMS)
    response_format = body.get("response_format")
    if response_format not in (None, {"type": "text"}):
        raise APIError("only response_format {\"type\": \"text\"} is supported",
                       param="response_format")
    messages = _messages(body.get("messages"))
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    except ChatTemplateError as e:
        raise APIError(str(e), param="messages") from None
    ids = tokenizer.encode(text)
    max_tokens = _int_param(body, "max_tokens", 1)
    max_completion = _int_param(body, "max_completion_tokens", 1)
    if max_tokens is not None and max_completion is not None and max_tokens != max_completion:
        raise APIError(f"max_tokens={max_tokens} and max_completion_tokens={max_completion} "
                       "disagree; give one", param="max_completion_tokens")
    return _generation(body, card, ids, text, "messages",
                       max_completion if max_completion is not None else max_tokens)


def _check_common(body: Mapping[str, Any], card: ModelCard, allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise APIError(f"unrecognized request argument(s): {', '.join(unknown)}",
                       param=unknown[0], code="unknown_parameter")
    for name, accepted in _NEUTRAL.items():
        if name in body and not any(_same(body[name], v) for v in accepted):
            raise APIError(f"{name}={body[name]!r} is not supported by this server "
                           f"(accepted: {', '.join(map(json.dumps, accepted))})", param=name)
    model = body.get("model")
    if model is not None and model != card.name:
        raise APIError(f"the model {model!r} does not exist; this server serves {card.name!r}",
                       param="model", code="model_not_found")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise APIError(f"user must be a string, got {user!r}", param="user")


def _same(value: Any, accepted: Any) -> bool:
    """Equal, and of the same kind: True is not 1, 1.0 is 1 (JSON has one number type)."""
    if isinstance(value, bool) or isinstance(accepted, bool):
        return value is accepted
    return value == accepted


def _prompt(prompt: Any, card: ModelCard, tokenizer: Tokenizer) -> tuple[list[int], str | None]:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        if not prompt:
            raise APIError("prompt is empty", param="prompt")
        try:
            return tokenizer.encode(prompt), prompt
        except ValueError as e:
            raise APIError(str(e), param="prompt") from None
    if isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt):
        bad = next((i for i, t in enumerate(prompt) if not 0 <= t < card.vocab_size), None)
        if bad is not None:
            raise APIError(f"prompt[{bad}] = {prompt[bad]} is not a token id of the vocabulary "
                           f"[0, {card.vocab_size})", param="prompt")
        return list(prompt), None
    if prompt is None:
        raise APIError("missing required parameter: prompt", param="prompt")
    if isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, (str, list)) for p in prompt):
        raise APIError(f"this server takes one prompt per request, got {len(prompt)}",
                       param="prompt")
    raise APIError("prompt must be a non-empty string or a non-empty list of token ids",
                   param="prompt")


def _messages(messages: Any) -> list[dict[str, Any]]:
    if messages is None:
        raise APIError("missing required parameter: messages", param="messages")
    if not isinstance(messages, list) or not messages:
        raise APIError("messages must be a non-empty list", param="messages")
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise APIError(f"{where} must be an object with a string 'role'", param=where)
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(_text_part(part, f"{where}.content[{j}]")
                              for j, part in enumerate(content))
        elif content is not None and not isinstance(content, str):
            raise APIError(f"{where}.content must be a string or a list of text parts",
                           param=f"{where}.content")
        out.append({**message, "content": content})
    return out


def _text_part(part: Any, where: str) -> str:
    if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
        return part["text"]
    raise APIError(f"{where}: only text parts ({{\"type\": \"text\", \"text\": ...}}) are "
                   "supported", param=where)


def _generation(body: Mapping[str, Any], card: ModelCard, ids: list[int], text: str | None,
                prompt_param: str, max_tokens: int | None) -> GenerationRequest:
    room = card.context_len - len(ids)
    if room < 1:
        raise APIError(f"the prompt has {len(ids)} tokens, which leaves no room to generate "
                       f"within this model's context of {card.context_len} tokens",
                       param=prompt_param, code="context_length_exceeded")
    if max_tokens is None:
        max_tokens = room
    elif max_tokens > room:
        raise APIError(f"this model's context is {card.context_len} tokens, but "
                       f"{len(ids)} prompt tokens + max_tokens={max_tokens} would need "
                       f"{len(ids) + max_tokens}", param="max_tokens",
                       code="context_length_exceeded")
    stream = _bool_param(body, "stream", False)
    options = body.get("stream_options")
    if options is not None and not stream:
        raise APIError("stream_options is only allowed with stream=true", param="stream_options")
    if options is not None and (not isinstance(options, dict) or set(options) - {"include_usage"}):
        raise APIError("stream_options must be an object with at most 'include_usage'",
                       param="stream_options")
    include_usage = _bool_param(options or {}, "include_usage", False, "stream_options.include_usage")
    sampling = SamplingParams(
        temperature=_number_param(body, "temperature", 0.0, lambda t: 0 <= t <= MAX_TEMPERATURE,
                                  f"between 0 and {MAX_TEMPERATURE}"),
        top_p=_number_param(body, "top_p", 1.0, lambda p: 0 < p <= 1, "in (0, 1]"),
        top_k=max(_int_param(body, "top_k", -1) or 0, 0),
        seed=_int_param(body, "seed", None),
        stop_token_ids=card.eos_token_ids,
        ignore_eos=_bool_param(body, "ignore_eos", False))
    return GenerationRequest(ids, text, max_tokens, sampling, _stop(body.get("stop")), stream,
                             include_usage)


def _stop(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, list) or not all(isinstance(s, str) and s for s in items):
        raise APIError("stop must be a non-empty string or a list of non-empty strings",
                       param="stop")
    return tuple(items)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_param(body: Mapping[str, Any], name: str, minimum: int | None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not _is_int(value):
        raise APIError(f"{name} must be an integer, got {value!r}", param=name)
    if minimum is not None and value < minimum:
        raise APIError(f"{name} must be at least {minimum}, got {value}", param=name)
    return value


def _number_param(body: Mapping[str, Any], name: str, default: float,
                  valid: Callable[[float], bool], expected: str) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise APIError(f"{name} must be a number, got {value!r}", param=name)
    if not valid(value):
        raise APIError(f"{name} must be {expected}, got {value}", param=name)
    return float(value)


def _bool_param(body: Mapping[str, Any], name: str, default: bool, param: str | None = None) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise APIError(f"{param or name} must be true or false, got {value!r}", param=param or name)
    return value
