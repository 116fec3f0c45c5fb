"""Metrics that published comparisons report and a run summary does not: time-averaged batch
size, KV memory waste, capacity at a latency limit, and the infinite-cache prefix hit bound.

Definitions:
- **Batch size reached**: running sequences averaged over time, `∫ n_running dt / ∫ dt` over
  the steps (a long step weighs more than a short one).
- **KV memory waste**: the share of *allocated* KV slots that hold no token state,
  integrated over time: `1 - ∫ tokens dt / ∫ allocated_blocks * block_size dt`. `tokens` is
  what the step's sequences hold after it (`sum_context`). Only steps that schedule every
  running sequence count, so that `sum_context` covers every sequence holding blocks. Slots
  reserved for tokens not generated yet and the unused tail of each last block are waste;
  free blocks are not (see `token_share`). For managers that share blocks (prefix caches)
  one block serves several sequences and this is not a waste measure.
- **Token share of the pool**: `∫ tokens dt / ∫ capacity_blocks * block_size dt`, the
  fraction of the whole KV pool holding token states (the vLLM paper's Figure 2 measure; at
  high load it also charges free blocks that fragmentation leaves unusable).
- **Capacity**: the highest offered rate at which every limit still holds, linearly
  interpolated between the last swept rate that meets them and the first that does not.
- **Prefix hit bound**: the share of prompt tokens an infinite prefix cache could serve, as
  `testbed`'s caches count hits: whole KV blocks of a prompt's leading run that an earlier
  request's prompt already held with the same prefix, at most `prompt_len - 1` tokens.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

STEP_COLUMNS = ("seconds", "n_seqs", "n_running", "sum_context", "kv_blocks_used", "kv_blocks_free")


def mean_running(steps: pd.DataFrame) -> float:
    """Running sequences averaged over time (NaN for a run without steps)."""
    seconds = steps["seconds"].to_numpy(dtype=float)
    total = seconds.sum()
    return float((steps["n_running"].to_numpy(dtype=float) * seconds).sum() / total) if total > 0 else math.nan


def kv_waste(steps: pd.DataFrame, block_size: int) -> float:
    """Share of allocated KV slots holding no token state, over time (module docstring)."""
    full = steps[(steps["n_seqs"] == steps["n_running"]) & (steps["kv_blocks_used"] > 0)]
    seconds = full["seconds"].to_numpy(dtype=float)
    slots = (full["kv_blocks_used"].to_numpy(dtype=float) * block_size * seconds).sum()
    if slots <= 0:
        return math.nan
    return float(1.0 - (full["sum_context"].to_numpy(dtype=float) * seconds).sum() / slots)


def token_share(steps: pd.DataFrame, block_size: int) -> float:
    """Share of the whole KV pool holding token states, over time (module docstring)."""
    full = steps[steps["n_seqs"] == steps["n_running"]]
    seconds = full["seconds"].to_numpy(dtype=float)
    capacity = (full["kv_blocks_used"] + full["kv_blocks_free"]).to_numpy(dtype=float)
    slots = (capacity * block_size * seconds).sum()
    if slots <= 0:
        return math.nan
    return float((full["sum_context"].to_numpy(dtype=float) * seconds).sum() / slots)


@dataclass(frozen=True, slots=True)
class Capacity:
    """The highest rate meeting the limits. `bound` is "=" when a crossing was interpolated,
    ">=" when even the highest swept rate meets them, "<" when not even the lowest does."""

    rate: float
    bound: str

    def __str__(self) -> str:
        prefix = "" if self.bound == "=" else self.bound
        return f"{prefix}{self.rate:.3g}"


def capacity(rates: Iterable[float], usage: Iterable[float]) -> Capacity:
    """Capacity from a rate sweep. `usage` is each point's worst metric-to-limit ratio (so <= 1
    meets every limit; NaN, e.g. nothing finished, counts as a miss). The crossing of 1 is
    interpolated linearly between the last point at or below it and the first above it."""
    points = sorted(zip(map(float, rates), map(float, usage)))
    if not points:
        raise ValueError("capacity needs at least one swept rate")
    rate = np.array([r for r, _ in points])
    use = np.array([math.inf if math.isnan(u) else u for _, u in points])
    over = np.flatnonzero(use > 1.0)
    if len(over) == 0:
        return Capacity(float(rate[-1]), ">=")
    i = int(over[0])
    if i == 0:
        return Capacity(float(rate[0]), "<")
    r0, r1, u0, u1 = rate[i - 1], rate[i], use[i - 1], use[i]
    if not math.isfinite(u1):
        return Capacity(float(r0), "=")
    return Capacity(float(r0 + (1.0 - u0) * (r1 - r0) / (u1 - u0)), "=")


def usage(frame: pd.DataFrame, limits: Mapping[str, float]) -> pd.Series:
    """Each row's worst ratio of a summary metric to its limit ({column: limit})."""
    ratios = [frame[column].astype(float) / float(limit) for column, limit in limits.items()]
    return pd.concat(ratios, axis=1).max(axis=1, skipna=False)


def prefix_hit_bound(prompt_lens: Iterable[int], block_hashes: Iterable[list[int]],
                     hash_block_size: int, block_size: int) -> float:
    """Share of prompt tokens an infinite prefix cache serves (module docstring). Requests in
    arrival order; `block_size` must divide `hash_block_size`. A KV block is identified by
    its content and everything before it, so a block hits only behind a hit prefix."""
    if hash_block_size % block_size:
        raise ValueError(f"block size {block_size} must divide the hash block size {hash_block_size}")
    per_hash = hash_block_size // block_size
    node_ids: dict[tuple[int, int, int], int] = {}  # (parent node, hash id, sub-block) -> node
    seen: set[int] = set()  # nodes (prefixes ending in a full block) some earlier prompt held
    hit = total = 0
    for prompt_len, hashes in zip(prompt_lens, block_hashes):
        prompt_len, parent, nodes = int(prompt_len), -1, []
        for b in range(prompt_len // block_size):
            parent = node_ids.setdefault((parent, hashes[b // per_hash], b % per_hash), len(node_ids))
            nodes.append(parent)
        lead = 0
        while lead < len(nodes) and nodes[lead] in seen:
            lead += 1
        hit += min(lead * block_size, (prompt_len - 1) // block_size * block_size)
        total += prompt_len
        seen.update(nodes)
    return hit / total if total else math.nan


def repeated_block_share(block_hashes: Iterable[list[int]]) -> float:
    """Share of hash blocks (of any request) whose id appeared earlier in the trace."""
    seen: set[int] = set()
    repeats = total = 0
    for hashes in block_hashes:
        repeats += sum(1 for h in hashes if h in seen)
        total += len(hashes)
        seen.update(hashes)
    return repeats / total if total else math.nan
