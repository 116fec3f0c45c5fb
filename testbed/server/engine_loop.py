"""The one thread that drives the engine for every HTTP connection (continuous batching).

HTTP handler threads `submit` requests, `abort` them (client gone) or `finish` them (stop
string seen) through a thread-safe inbox; the loop thread alone touches the engine:

    take commands (block while idle) -> engine.step() -> hand each new token to its
    request's outbox -> report ended requests to the observers (metrics, recording)

Each request's outbox receives `TokenEvent`s, the last of which carries how the request
ended, or a lone `Ended` when it ended without a new token (aborted, rejected, failed).
"""
from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import mlx.core as mx

from testbed.engine.engine import Engine, StepOutput
from testbed.request import Request, SamplingParams, Sequence
from testbed.stack import Stack


@dataclass(frozen=True, slots=True)
class Ended:
    """How a request ended: status `finished` (reason "stop" / "length"), `rejected`
    (reason says why), `aborted`, or `failed` (the engine raised)."""

    status: str
    reason: str
    num_output_tokens: int
    num_cached_tokens: int


@dataclass(frozen=True, slots=True)
class TokenEvent:
    token_id: int
    ended: Ended | None = None  # set on the request's last token


@dataclass(slots=True)
class RequestHandle:
    """A submitted request and the outbox its handler thread reads."""

    request: Request
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache (set by the loop)

    @property
    def request_id(self) -> str:
        return self.request.request_id


@dataclass(frozen=True, slots=True)
class EngineState:
    """Queue and KV occupancy after the last step, published for `/metrics`."""

    waiting: int = 0
    running: int = 0
    swapped: int = 0
    kv_blocks_used: int = 0
    kv_blocks_free: int = 0


class LoopObserver(Protocol):
    """Told what the loop does, on the loop thread."""

    def arrived(self, request: Request) -> None: ...
    def stepped(self, out: StepOutput, engine: Engine) -> None: ...
    def ended(self, seq: Sequence) -> None: ...


@dataclass(frozen=True, slots=True)
class _End:
    request_id: str
    stop: bool  # finished by a stop string (else aborted)


_CLOSE = object()


class EngineLoop:
    """Owns an engine on its own thread; `submit`, `abort`, `finish` and `close` are
    thread-safe.

    `start(build)` builds the stack on the loop thread itself: MLX streams are thread-local,
    so arrays (weights, the KV pool) must be made on the thread that evaluates them.
    `observers` see arrivals, steps and ended sequences on the loop thread. While idle the
    loop blocks on its inbox; with `idle_tick_s` it wakes that often to call `on_idle`
    (e.g. to flush a recording). `on_exit(error)` runs last, on the loop thread.
    """

    def __init__(self, observers: Iterable[LoopObserver] = (), *,
                 on_idle: Callable[[], None] | None = None, idle_tick_s: float | None = None,
                 on_exit: Callable[[BaseException | None], None] | None = None):
        if (on_idle is None) != (idle_tick_s is None):
            raise ValueError("on_idle and idle_tick_s go together")
        self.observers = list(observers)
        self.on_idle, self.idle_tick_s, self.on_exit = on_idle, idle_tick_s, on_exit
        self.engine: Engine | None = None
        self.state = EngineState()
        self.error: BaseException | None = None
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._submit_lock = threading.Lock()
        self._ids = itertools.count()
        self._handles: dict[str, RequestHandle] = {}
        self._seqs: dict[str, Sequence] = {}  # live sequences by request id
        self._closing = False
        self._thread: threading.Thread | None = None

    # ---- any thread ----
    def start(self, build: Callable[[], Stack]) -> Stack:
        """Start the thread: it runs `build`, then the loop. Returns the built stack once
        it is there; an error of `build` is raised here."""
        built: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, args=(build, built),
                                        name="engine-loop", daemon=True)
        self._thread.start()
        result = built.get()
        if isinstance(result, BaseException):
            self._thread.join()
            raise result
        return result

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.error is None

    def submit(self, prompt_token_ids: list[int], max_tokens: int, sampling: SamplingParams,
               prompt_text: str | None = None, request_id: str | None = None) -> RequestHandle:
        """Queue a request; it arrives now on the engine's clock. Arrival times and inbox
        order agree (one lock), so recorded traces come out in arrival order."""
        with self._submit_lock:
            rid = request_id or f"req-{next(self._ids)}"
            request = Request(rid, self.engine.clock.now, len(prompt_token_ids), max_tokens,
                              prompt_token_ids=prompt_token_ids, prompt_text=prompt_text,
                              sampling=sampling)
            handle = RequestHandle(request)
            self._inbox.put(handle)
        return handle

    def abort(self, request_id: str) -> None:
        """The client went away: abort its request (a no-op once it has ended)."""
        self._inbox.put(_End(request_id, stop=False))

    def finish(self, request_id: str) -> None:
        """The client's text reached a stop string: the request finished, reason "stop"."""
        self._inbox.put(_End(request_id, stop=True))

    def close(self, timeout: float | None = None) -> None:
        """Abort what is in flight, let the loop report it, and stop the thread."""
        self._inbox.put(_CLOSE)
        if self._thread is not None:
            self._thread.join(timeout)

    # ---- the loop thread ----
    def _run(self, build: Callable[[], Stack], built: queue.SimpleQueue) -> None:
        try:
            self._serve(build, built)
        finally:
            # MLX keeps per-thread streams; left to process exit, the kernels compiled on
            # this thread abort the interpreter ("terminate called without an active exception").
            mx.clear_streams()

    def _serve(self, build: Callable[[], Stack], built: queue.SimpleQueue) -> None:
        try:
            stack = build()
        except BaseException as e:
            built.put(e)
            return
        self.engine = stack.engine
        kv = self.engine.scheduler.kv
        self.state = EngineState(kv_blocks_used=kv.num_used_blocks, kv_blocks_free=kv.num_free_blocks)
        built.put(stack)
        try:
            while not (self._closing and not self.engine.has_unfinished):
                self._take_commands(wait=not self.engine.has_unfinished)
                if self.engine.has_unfinished:
                    self._step()
        except BaseException as e:  # report to every waiting client, then to the caller
            self.error = e
            self._fail_all(f"{type(e).__name__}: {e}")
        finally:
            if self.on_exit is not None:
                self.on_exit(self.error)

    def _take_commands(self, wait: bool) -> None:
        """Apply every queued command; while idle, first block until one comes."""
        if wait:
            while True:
                try:
                    self._apply(self._inbox.get(timeout=self.idle_tick_s))
                    break
                except queue.Empty:
                    self.on_idle()
        while True:
            try:
                self._apply(self._inbox.get_nowait())
            except queue.Empty:
                return

    def _apply(self, command) -> None:
        if isinstance(command, RequestHandle):
            if self._closing:
                command.events.put(Ended("aborted", "the server is shutting down", 0, 0))
                return
            self._handles[command.request_id] = command
            for observer in self.observers:
                observer.arrived(command.request)
            self._seqs[command.request_id] = self.engine.add_request(command.request)
        elif isinstance(command, _End):
            seq = self._seqs.get(command.request_id)
            if seq is not None and command.stop:
                self.engine.scheduler.finish(seq.seq_id, self.engine.clock.now, reason="stop")
            elif seq is not None:
                self.engine.abort(command.request_id)
        elif command is _CLOSE:
            self._closing = True
            for request_id in list(self._handles):
                self.engine.abort(request_id)

    def _step(self) -> None:
        out = self.engine.step()
        ended = {}
        for seq in out.finished:
            self._seqs.pop(seq.request.request_id, None)
            ended[seq.seq_id] = Ended(seq.status.value, seq.reason, seq.num_output_tokens,
                                      seq.num_cached_tokens)
        for seq, token in out.new_tokens:
            handle = self._handles.get(seq.request.request_id)
            if handle is not None:
                handle.num_cached_tokens = seq.num_cached_tokens
                handle.events.put(TokenEvent(token, ended.pop(seq.seq_id, None)))
        for seq in out.finished:
            handle = self._handles.pop(seq.request.request_id, None)
            if handle is not None and seq.seq_id in ended:
                handle.events.put(ended[seq.seq_id])
        kv, sched = self.engine.scheduler.kv, self.engine.scheduler
        self.state = EngineState(sched.num_waiting, sched.num_running, sched.num_swapped,
                                 kv.num_used_blocks, kv.num_free_blocks)
        for observer in self.observers:
            observer.stepped(out, self.engine)
            for seq in out.finished:
                observer.ended(seq)
        if out.plan.is_empty and not out.finished:
            self._wait_for_news()

    def _wait_for_news(self) -> None:
        """Nothing could be scheduled (e.g. the KV pool is full of swapped work): wait for a
        command rather than spin."""
        try:
            self._apply(self._inbox.get(timeout=0.05))
        except queue.Empty:
            pass

    def _fail_all(self, reason: str) -> None:
        for handle in self._handles.values():
            handle.events.put(Ended("failed", reason, 0, 0))
        self._handles.clear()
        while True:  # requests still in the inbox
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(command, RequestHandle):
                command.events.put(Ended("failed", reason, 0, 0))
