"""OpenAI response bodies: whole completions and the chunks of a stream.

Completions (`text_completion`) carry `choices[0].text`; chat completions
(`chat.completion`) carry a message, and their chunks a `delta` (the first one opens the
assistant's turn). `usage` reports prompt, completion and total tokens, with the prompt
tokens served from the prefix cache under `prompt_tokens_details.cached_tokens`.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


@dataclass(slots=True)
class ResponseBuilder:
    """The bodies of one response; `chat` picks the chat completion shapes."""

    model: str
    chat: bool
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        if not self.id:
            self.id = f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}"

    def complete(self, text: str, finish_reason: str, usage_: dict[str, Any]) -> dict[str, Any]:
        """The whole (non-streamed) response."""
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return self._body("chat.completion" if self.chat else "text_completion", [choice],
                          usage=usage_)

    def first_chunk(self) -> dict[str, Any] | None:
        """A chat stream opens the assistant's turn before any text; a completion does not."""
        if not self.chat:
            return None
        return self._chunk({"index": 0, "delta": {"role": "assistant", "content": ""},
                            "logprobs": None, "finish_reason": None})

    def chunk(self, text: str, finish_reason: str | None) -> dict[str, Any]:
        """The chunk of one generated token (the last one carries the finish reason)."""
        if self.chat:
            delta = {"content": text} if text or finish_reason is None else {}
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return self._chunk(choice)

    def usage_chunk(self, usage_: dict[str, Any]) -> dict[str, Any]:
        """`stream_options.include_usage`: a last chunk with no choices and the usage."""
        return self._body(self._chunk_object, [], usage=usage_)

    @property
    def _chunk_object(self) -> str:
        return "chat.completion.chunk" if self.chat else "text_completion"

    def _chunk(self, choice: dict[str, Any]) -> dict[str, Any]:
        return self._body(self._chunk_object, [choice])

    def _body(self, obj: str, choices: list, **extra: Any) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "choices": choices, **extra}
