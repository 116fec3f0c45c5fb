"""Offline generation: prompts (token ids) in, tokens streamed out.

One prefill over all prompts (flattened, of any lengths), then batched decode steps of one
token per unfinished sequence, over `Qwen2Model` + `ContiguousKVCache` + the sampler. A
sequence stops on an EOS / stop token id (unless `ignore_eos`), on a stop string (matched in
the detokenized text, which is held back while it could still begin a stop string), or after
`max_tokens` tokens.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np

from testbed.model.kv_cache import ContiguousKVCache
from testbed.model.qwen2 import Qwen2Model
from testbed.model.sampling import sample
from testbed.request import SamplingParams


@dataclass(slots=True)
class TokenEvent:
    """One generated token of prompt `index`: its id, the text it completed (empty without a
    tokenizer, or while held back) and, on its sequence's last token, why it finished."""

    index: int
    token_id: int
    text: str
    finish_reason: str | None = None  # "stop" (EOS, stop token or stop string) | "length"


@dataclass(slots=True)
class Completion:
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = ""


@dataclass(slots=True)
class GenerationStats:
    prompt_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_tokens: int = 0  # tokens sampled by decode steps (each sequence's first comes from prefill)
    decode_seconds: float = 0.0
    decode_steps: int = 0

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_tokens / self.decode_seconds if self.decode_seconds else 0.0


@dataclass(slots=True)
class GenerationResult:
    completions: list[Completion]
    stats: GenerationStats


class StopStringMatcher:
    """Streams a sequence's text through a detokenizer and cuts it at the first stop string.

    `add` returns the text that is safe to show: everything except a tail that could still
    turn out to be the start of a stop string.
    """

    def __init__(self, detokenizer, stop: Sequence[str]):
        self.detokenizer = detokenizer
        self.stop = [s for s in stop if s]
        self.pending = ""
        self.stopped = False

    def add(self, token_id: int) -> str:
        self.pending += self.detokenizer.add_token(token_id)
        return self._release()

    def finish(self) -> str:
        """The held-back text once the sequence ended for another reason."""
        self.pending += self.detokenizer.finalize()
        text = self._release()
        rest, self.pending = ("" if self.stopped else self.pending), ""
        return text + rest

    def _release(self) -> str:
        hits = [i for i in (self.pending.find(s) for s in self.stop) if i >= 0]
        if hits:
            text, self.pending, self.stopped = self.pending[:min(hits)], "", True
            return text
        hold = max((n for s in self.stop for n in range(1, len(s))
                    if self.pending.endswith(s[:n])), default=0)
        cut = len(self.pending) - hold
        text, self.pending = self.pending[:cut], self.pending[cut:]
        return text


@dataclass(slots=True)
class _SeqState:
    params: SamplingParams
    completion: Completion
    text: StopStringMatcher | None
    done: bool = False


def generate(model: Qwen2Model, prompts: Sequence[Sequence[int]],
             sampling: SamplingParams | Sequence[SamplingParams] = SamplingParams(), *,
             max_tokens: int = 256, eos_token_ids: Sequence[int] = (),
             stop: Sequence[str] = (), tokenizer=None,
             on_token: Callable[[TokenEvent], None] | None = None) -> GenerationResult:
    """Generate for every prompt; `on_token` sees each token as soon as it is sampled.

    `sampling` is one SamplingParams for all prompts or one per prompt. `eos_token_ids` and
    each request's `stop_token_ids` end a sequence unless its `ignore_eos` is set; `stop`
    strings need a `tokenizer` (with `detokenizer()`).
    """
    params = _per_prompt(sampling, len(prompts))
    _check_inputs(model, prompts, max_tokens, stop, tokenizer)
    states = [_SeqState(p, Completion(), StopStringMatcher(tokenizer.detokenizer(), stop)
                        if tokenizer is not None else None) for p in params]
    stop_ids = [set() if p.ignore_eos else set(eos_token_ids) | set(p.stop_token_ids)
                for p in params]
    cache = ContiguousKVCache.for_model(
        model, len(prompts), capacity=max(len(p) for p in prompts) + max_tokens)
    stats = GenerationStats(prompt_tokens=sum(len(p) for p in prompts))

    start = time.perf_counter()
    lengths = [len(p) for p in prompts]
    positions = cache.prepare(lengths)
    tokens = mx.array(np.concatenate([np.asarray(p, dtype=np.int32) for p in prompts]))
    last_rows = mx.array(np.cumsum(lengths).astype(np.int32) - 1)
    logits = model(tokens, positions, cache, logits_indices=last_rows)
    sampled = sample(logits, params, [0] * len(prompts))
    mx.eval(sampled, *cache.arrays())
    stats.prefill_seconds = time.perf_counter() - start
    active = list(range(len(prompts)))

    while True:
        for i, token in zip(active, sampled.tolist()):
            _accept(i, token, states[i], stop_ids[i], max_tokens, on_token)
        active = [i for i in active if not states[i].done]
        if not active:
            break
        start = time.perf_counter()
        num_new = [0] * len(prompts)
        for i in active:
            num_new[i] = 1
        positions = cache.prepare(num_new)
        tokens = mx.array([states[i].completion.token_ids[-1] for i in active], dtype=mx.int32)
        logits = model(tokens, positions, cache)
        sampled = sample(logits, [params[i] for i in active],
                         [len(states[i].completion.token_ids) for i in active])
        mx.eval(sampled, *cache.arrays())
        stats.decode_seconds += time.perf_counter() - start
        stats.decode_tokens += len(active)
        stats.decode_steps += 1
    return GenerationResult([s.completion for s in states], stats)


def _accept(index: int, token: int, state: _SeqState, stop_ids: set[int], max_tokens: int,
            on_token: Callable[[TokenEvent], None] | None) -> None:
    """Record one sampled token, decide whether its sequence is finished, and report it."""
    out = state.completion
    out.token_ids.append(token)
    reason, text = None, ""
    if token in stop_ids:
        reason = "stop"
    elif state.text is not None:
        text = state.text.add(token)
        if state.text.stopped:
            reason = "stop"
    if reason is None and len(out.token_ids) >= max_tokens:
        reason = "length"
    if reason is not None:
        if state.text is not None:
            text += state.text.finish()
        state.done, out.finish_reason = True, reason
    out.text += text
    if on_token is not None:
        on_token(TokenEvent(index, token, text, reason))


def _per_prompt(sampling: SamplingParams | Sequence[SamplingParams], n: int
                ) -> list[SamplingParams]:
    if isinstance(sampling, SamplingParams):
        return [sampling] * n
    if len(sampling) != n:
        raise ValueError(f"generate: {len(sampling)} SamplingParams for {n} prompts")
    return list(sampling)


def _check_inputs(model: Qwen2Model, prompts: Sequence[Sequence[int]], max_tokens: int,
                  stop: Sequence[str], tokenizer) -> None:
    if not prompts:
        raise ValueError("generate: no prompts")
    if max_tokens < 1:
        raise ValueError(f"generate: max_tokens={max_tokens} must be at least 1")
    if stop and tokenizer is None:
        raise ValueError("generate: stop strings need a tokenizer")
    vocab, limit = model.config.vocab_size, model.config.max_position_embeddings
    for i, prompt in enumerate(prompts):
        if not prompt:
            raise ValueError(f"generate: prompt {i} is empty")
        bad = [t for t in prompt if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"generate: prompt {i} has token id {bad[0]} outside the "
                             f"vocabulary [0, {vocab})")
        if len(prompt) + max_tokens > limit:
            raise ValueError(f"generate: prompt {i} ({len(prompt)} tokens) + max_tokens="
                             f"{max_tokens} exceeds max_position_embeddings={limit}")
