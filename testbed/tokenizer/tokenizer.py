"""The project's tokenizer: a `tokenizers.Tokenizer` plus what serving needs around it
(end-of-sequence ids, the chat template, streaming detokenization)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import tokenizers

from testbed.tokenizer.chat_template import ChatTemplateError, render_chat_template
from testbed.tokenizer.detokenizer import StreamingDetokenizer


@dataclass(slots=True)
class Tokenizer:
    backend: tokenizers.Tokenizer
    eos_token_ids: tuple[int, ...]
    chat_template: str | None = None
    # Template variables transformers passes: bos_token, eos_token, pad_token, unk_token.
    special_tokens: dict[str, str] = field(default_factory=dict)
    source: str = ""

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`; special tokens written in the text map to their ids."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"encode: text is not valid Unicode at index {e.start} "
                             f"({e.reason}: {text[e.start:e.end]!r})") from None
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        vocab_size = self.vocab_size
        for i, token_id in enumerate(ids):
            if not 0 <= token_id < vocab_size:
                raise ValueError(f"decode: ids[{i}] = {token_id} is outside the vocabulary "
                                 f"[0, {vocab_size}) of {self.source or 'this tokenizer'}")
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            **kwargs: Any) -> str:
        """Render `messages` with the model's own chat template (as transformers does)."""
        if self.chat_template is None:
            raise ChatTemplateError(f"{self.source or 'tokenizer'}: has no chat template")
        return render_chat_template(self.chat_template, messages,
                                    add_generation_prompt=add_generation_prompt,
                                    special_tokens=self.special_tokens, **kwargs)

    def detokenizer(self, skip_special_tokens: bool = False) -> StreamingDetokenizer:
        return StreamingDetokenizer(lambda ids: self.decode(ids, skip_special_tokens))
