"""One request's output as text, on its HTTP handler thread.

`TextStream` reads the request's outbox and yields one `Piece` per generated token (its
text may be empty while a multi-byte character or a possible stop string is held back); the
last piece carries the finish reason. End-of-sequence tokens end the text without adding to
it. A stop string cuts the text before it and finishes the request early: the scheduler ends
the sequence as finished with reason "stop" (the engine may have generated a token or two
more by then, which the recording counts and the client never sees).
"""
from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from testbed.generate import StopStringMatcher
from testbed.server.engine_loop import Ended, EngineLoop, RequestHandle, TokenEvent
from testbed.tokenizer import Tokenizer

POLL_S = 0.2  # how often a waiting handler checks that its client and the engine are still there


@dataclass(frozen=True, slots=True)
class Piece:
    text: str
    finish_reason: str | None = None  # "stop" | "length" on the last piece


class ClientGone(Exception):
    """The client closed its connection; the request was aborted."""


class EndedEarly(Exception):
    """The request ended without a finish: rejected, aborted by the server, or failed."""

    def __init__(self, ended: Ended):
        super().__init__(f"{ended.status}: {ended.reason}")
        self.ended = ended


class TextStream:
    def __init__(self, loop: EngineLoop, handle: RequestHandle, tokenizer: Tokenizer,
                 stop: tuple[str, ...], client_gone: Callable[[], bool]):
        self.loop, self.handle, self.client_gone = loop, handle, client_gone
        self.matcher = StopStringMatcher(tokenizer.detokenizer(), stop)
        self.num_tokens = 0  # tokens the client got (the stop-string token included)
        self.done = False
        self._next_check = time.monotonic() + POLL_S

    def __iter__(self) -> Iterator[Piece]:
        while not self.done:
            event = self._next_event()
            if isinstance(event, Ended):
                self.done = True
                raise EndedEarly(event)
            yield self._piece(event)

    def cancel(self) -> None:
        """The client went away: abort the request (no-op once it has ended)."""
        if not self.done:
            self.done = True
            self.loop.abort(self.handle.request_id)

    def _piece(self, event: TokenEvent) -> Piece:
        self.num_tokens += 1
        ended = event.ended
        if ended is not None and ended.reason == "stop":  # an end-of-sequence token
            self.done = True
            return Piece(self.matcher.finish(), "stop")
        text = self.matcher.add(event.token_id)
        if self.matcher.stopped:
            self.done = True
            if ended is None:
                self.loop.finish(self.handle.request_id)
            return Piece(text + self.matcher.finish(), "stop")
        if ended is not None:
            self.done = True
            return Piece(text + self.matcher.finish(), ended.reason)
        return Piece(text)

    def _next_event(self) -> TokenEvent | Ended:
        """The next event; every POLL_S, also whether the client and the engine are there
        (a non-streamed response writes nothing until the end, so only a check can tell)."""
        while True:
            try:
                event = self.handle.events.get(timeout=POLL_S)
            except queue.Empty:
                event = None
            if time.monotonic() >= self._next_check:
                self._next_check = time.monotonic() + POLL_S
                if self.client_gone():
                    self.cancel()
                    raise ClientGone()
                if event is None and not self.loop.alive:
                    self.done = True
                    raise EndedEarly(Ended("failed", "the engine loop has stopped", 0, 0))
            if event is not None:
                return event
