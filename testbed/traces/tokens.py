"""Prompt token ids for traces that give only lengths (and perhaps block hashes).

The real engine needs token ids; a trace without text gets deterministic synthetic ones.
With `block_hashes`, hash `h` stands for one fixed block of `hash_block_size` tokens that
depends on (seed, h) alone: requests sharing a hash share that block, so a prefix cache
hits in the real engine exactly where the trace says. A short last block is the prefix of
its hash's block; tokens past the hashed blocks (a partial last block without a hash) and
all tokens of a trace without hashes come from the request's own stream, keyed by its
request id, shared with no other request.

Each stream is the splitmix64 sequence seeded with the stream's key: token i is a fixed
64-bit mix of key + (i + 1) * golden ratio, reduced into [low, high). It is stateless, so
blocks and requests are computed independently and vectorized with numpy.
"""
from __future__ import annotations

import hashlib

import numpy as np

from testbed.traces.schema import Trace

QWEN2_FIRST_SPECIAL_ID = 151643  # Qwen2's <|endoftext|>; every id from here on is special

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_BLOCK_DOMAIN = np.uint64(0xB10C)
_REQUEST_DOMAIN = np.uint64(0x5E0)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's output function: a bijection on uint64 that scatters nearby inputs."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _stream(keys: np.ndarray, positions: np.ndarray, low: int, span: int) -> np.ndarray:
    values = _mix(keys + (positions.astype(np.uint64) + np.uint64(1)) * _GOLDEN)
    return (values % np.uint64(span)).astype(np.int32) + np.int32(low)


def _request_key(request_id: str, seed_key: np.ndarray) -> np.ndarray:
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return _mix(np.frombuffer(digest, dtype=np.uint64) ^ seed_key ^ _REQUEST_DOMAIN)


def token_range(vocab_size: int, low: int = 0, high: int | None = None) -> tuple[int, int]:
    """The id range [low, high) to draw from; `high` defaults to the vocabulary size, or
    to Qwen2's first special token when the vocabulary holds Qwen2's special tokens."""
    high = min(vocab_size, QWEN2_FIRST_SPECIAL_ID) if high is None else high
    if not 0 <= low < high <= vocab_size:
        raise ValueError(f"token ids [{low}, {high}) must lie within the vocabulary "
                         f"[0, {vocab_size}) and hold at least one id")
    return low, high


def synthesize_prompt_tokens(trace: Trace, vocab_size: int, seed: int = 0, low: int = 0,
                             high: int | None = None) -> list[np.ndarray]:
    """Token ids (int32 arrays of `prompt_len` ids in [low, high)) for every request."""
    low, high = token_range(vocab_size, low, high)
    span = high - low
    with np.errstate(over="ignore"):
        seed_key = _mix(np.array([seed], dtype=np.uint64))
        block_size = trace.hash_block_size
        hashes = trace.df["block_hashes"] if trace.has("block_hashes") else None
        out = []
        for i, (request_id, prompt_len) in enumerate(
                zip(trace.df["request_id"].tolist(), trace.df["prompt_len"].tolist())):
            hashed = 0 if hashes is None else min(len(hashes.iat[i]) * block_size, prompt_len)
            parts = []
            if hashed:
                ids = np.asarray(hashes.iat[i]).astype(np.uint64)
                keys = _mix(_mix(ids ^ _BLOCK_DOMAIN) ^ seed_key)
                offsets = np.tile(np.arange(block_size, dtype=np.uint64), len(ids))[:hashed]
                parts.append(_stream(np.repeat(keys, block_size)[:hashed], offsets, low, span))
            if hashed < prompt_len:
                positions = np.arange(hashed, prompt_len, dtype=np.uint64)
                parts.append(_stream(_request_key(request_id, seed_key), positions, low, span))
            out.append(parts[0] if len(parts) == 1 else np.concatenate(parts))
    return out


def with_prompt_tokens(trace: Trace, vocab_size: int, seed: int = 0, low: int = 0,
                       high: int | None = None) -> Trace:
    """The trace with a `prompt_token_ids` column from `synthesize_prompt_tokens`; a trace
    that has token ids already is returned as it is. Prompt text must be tokenized instead."""
    if trace.has("prompt_token_ids"):
        return trace
    if trace.has("prompt_text"):
        raise ValueError(f"{trace.name} has prompt_text: tokenize it rather than synthesize "
                         "token ids that would not match it")
    low, high = token_range(vocab_size, low, high)
    df = trace.df.copy()
    df["prompt_token_ids"] = synthesize_prompt_tokens(trace, vocab_size, seed, low, high)
    return trace.replace(df, note=f"synthetic prompt token ids in [{low}, {high}), seed {seed}")
