"""Token sampling on device, vectorized over a batch with per-row parameters.

Greedy (temperature 0), temperature, top-k and top-p, combined per row. Randomness is
Gumbel-max with one key per row derived from the request's seed and the index of the token
being sampled, so a request's tokens are reproducible and do not depend on which other
requests share the batch.
"""
from __future__ import annotations

import random
from collections.abc import Sequence as Seq

import mlx.core as mx
import numpy as np

from testbed.request import SamplingParams, Sequence


def check_params(params: SamplingParams) -> None:
    if params.temperature < 0:
        raise ValueError(f"sampling: temperature={params.temperature} must be >= 0")
    if params.top_k < 0:
        raise ValueError(f"sampling: top_k={params.top_k} must be >= 0 (0 = off)")
    if not 0 < params.top_p <= 1:
        raise ValueError(f"sampling: top_p={params.top_p} must be in (0, 1]")


def row_key(seed: int | None, token_index: int) -> np.ndarray:
    """The random key [2] uint32 of one sampled token: a hash of (seed, token_index).
    A request without a seed gets a fresh random key."""
    if seed is None:
        seed = random.getrandbits(64)
    return np.random.SeedSequence([seed % 2**64, token_index]).generate_state(2, np.uint32)


def sample(logits: mx.array, params: Seq[SamplingParams], token_indices: Seq[int]) -> mx.array:
    """One token id per row of `logits` [B, vocab] (int32 [B]).

    Row b uses `params[b]`; `token_indices[b]` is which output token of its request this is
    (0 for the first), which together with the request's seed selects the random key.
    """
    if logits.ndim != 2 or logits.shape[0] != len(params) or len(params) != len(token_indices):
        raise ValueError(f"sample: logits {logits.shape} need one row per params "
                         f"({len(params)}) and token index ({len(token_indices)})")
    for p in params:
        check_params(p)
    logits = logits.astype(mx.float32)
    greedy = mx.argmax(logits, axis=-1).astype(mx.int32)
    if all(p.temperature == 0 for p in params):
        return greedy
    temperature = mx.array([p.temperature or 1.0 for p in params], dtype=mx.float32)
    scores = logits / temperature[:, None]
    order = None
    if any(p.top_k or p.top_p < 1 for p in params):
        order = mx.argsort(-scores, axis=-1)
        scores = _top_k_top_p(mx.take_along_axis(scores, order, axis=-1), params)
    keys = mx.array(np.stack([row_key(p.seed, i) for p, i in zip(params, token_indices)]))
    noise = mx.vmap(lambda key: mx.random.gumbel((logits.shape[-1],), key=key))(keys)
    choice = mx.argmax(scores + noise, axis=-1)
    if order is not None:
        choice = mx.take_along_axis(order, choice[:, None], axis=-1)[:, 0]
    is_greedy = mx.array([p.temperature == 0 for p in params])
    return mx.where(is_greedy, greedy, choice.astype(mx.int32))


def _top_k_top_p(sorted_scores: mx.array, params: Seq[SamplingParams]) -> mx.array:
    """Mask (to -inf) the tail of each row of descending scores: beyond rank top_k, then
    beyond the smallest prefix whose probability reaches top_p."""
    vocab = sorted_scores.shape[-1]
    rank = mx.arange(vocab)[None, :]
    top_k = mx.array([p.top_k or vocab for p in params])[:, None]
    top_p = mx.array([p.top_p for p in params], dtype=mx.float32)[:, None]
    keep = rank < top_k
    probs = mx.softmax(mx.where(keep, sorted_scores, -mx.inf), axis=-1)
    mass_before = mx.cumsum(probs, axis=-1) - probs
    keep = keep & ((mass_before < top_p) | (rank == 0))
    return mx.where(keep, sorted_scores, -mx.inf)


def sample_sequences(seqs: Seq[Sequence], logits: mx.array) -> mx.array:
    """Sample the next token of each sequence (row b of `logits` belongs to `seqs[b]`)."""
    return sample(logits, [s.request.sampling for s in seqs],
                  [s.num_output_tokens for s in seqs])
