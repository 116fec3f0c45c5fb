"""Streaming detokenization: text out as tokens arrive, never half a UTF-8 character."""
from __future__ import annotations

from typing import Callable, Sequence

REPLACEMENT_CHAR = "\ufffd"


class StreamingDetokenizer:
    """Turns a stream of token ids into text pieces whose concatenation equals
    `decode(all_ids)`.

    Byte-level tokens may end inside a multi-byte character; such text decodes with a
    trailing U+FFFD and is held back until a later token completes it (or `finalize`).
    Each step decodes a short window that starts one emitted chunk back, so decoders whose
    output depends on the preceding token still join up correctly.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str]):
        self._decode = decode
        self._ids: list[int] = []
        self._prefix_start = 0  # window start: the last emitted chunk, kept as context
        self._read_start = 0    # first id whose text has not been emitted

    def add_token(self, token_id: int) -> str:
        """Feed one id; returns the newly completed text (often empty mid-character)."""
        self._ids.append(token_id)
        return self._emit(final=False)

    def finalize(self) -> str:
        """The text still held back (incomplete or invalid bytes decode to U+FFFD)."""
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        if self._read_start == len(self._ids):
            return ""
        prefix = self._decode(self._ids[self._prefix_start:self._read_start])
        text = self._decode(self._ids[self._prefix_start:])
        if not final and (text.endswith(REPLACEMENT_CHAR) or len(text) <= len(prefix)):
            return ""
        self._prefix_start, self._read_start = self._read_start, len(self._ids)
        return text[len(prefix):]
