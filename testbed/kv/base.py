"""The KV manager seam: block accounting that schedulers drive and executors follow.

A KV manager hands out *block ids* of `block_size` tokens from a pool of `num_blocks`
device blocks (plus `num_host_blocks` for swapping). It holds no arrays: the real engine's
physical pool is indexed by these ids, the simulator only counts them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol

from testbed.model.config import ModelConfig
from testbed.request import Sequence


class KVManager(Protocol):
    block_size: int
    num_blocks: int
    num_host_blocks: int
    stats: "KVStats"

    def lookup(self, seq: Sequence) -> int:
        """Prompt tokens of `seq` cached right now: a multiple of `block_size`, at most
        `seq.num_tokens - 1` (the last token is always computed, for its logits). No side effects."""

    def allocate(self, seq: Sequence, num_tokens: int) -> bool:
        """Make `seq.block_table` cover `num_tokens` tokens, all or nothing. The first call on a
        sequence without blocks first acquires the cached blocks `lookup` reports."""

    def commit(self, seq: Sequence) -> None:
        """After a step: register the newly full, computed blocks of `seq` for reuse."""

    def free(self, seq: Sequence, finished: bool = False) -> None:
        """Release every block of `seq` (device and host); cached ones become evictable.
        `finished`: `seq` ends for good (its request-unique blocks can never be hit again)."""

    def swap_out(self, seq: Sequence) -> list[tuple[int, int]] | None:
        """Move `seq`'s computed blocks to the host pool: (device, host) copies; None if it lacks room."""

    def swap_in(self, seq: Sequence) -> list[tuple[int, int]] | None:
        """Bring a swapped-out `seq` back: (host, device) copies; None if the device lacks room."""

    def can_ever_fit(self, seq: Sequence) -> str | None:
        """Why `seq` can never be served by this pool, or None if it can."""

    @property
    def num_free_blocks(self) -> int: ...

    @property
    def num_used_blocks(self) -> int: ...

    @property
    def num_free_host_blocks(self) -> int: ...


class BlockCounts:
    """The pool counts of the KVManager protocol and its swap-out, for managers that track
    their used device blocks in `_num_used`, their swap space in a `HostPool` `_host`, and
    give a sequence's device blocks back with `_release_all(seq)`."""

    num_blocks: int
    block_size: int

    def swap_out(self, seq: Sequence) -> list[tuple[int, int]] | None:
        """KVManager.swap_out: host blocks for the computed ones, then the device ones freed."""
        device = seq.block_table[:cdiv(seq.num_computed_tokens, self.block_size)]
        host = self._host.store(seq.seq_id, len(device))
        if host is None:
            return None
        self._release_all(seq)
        self.stats.swapped_out_blocks += len(device)
        return list(zip(device, host))

    @property
    def num_used_blocks(self) -> int:
        return self._num_used

    @property
    def num_free_blocks(self) -> int:
        """Blocks a new allocation can get: never handed out, or (in a caching manager)
        cached but unused, hence evictable."""
        return self.num_blocks - self._num_used

    @property
    def num_free_host_blocks(self) -> int:
        return self._host.num_free


@dataclass(slots=True)
class KVStats:
    """Counters since the manager was built. Hits count prompt tokens at a sequence's first
    admission only, so `hit_rate` is the fraction of prompt tokens served from cache."""

    hit_tokens: int = 0
    queried_tokens: int = 0
    allocated_blocks: int = 0  # fresh blocks handed out (cache hits excluded)
    freed_blocks: int = 0  # blocks whose last user let go of them
    evicted_blocks: int = 0
    swapped_out_blocks: int = 0
    swapped_in_blocks: int = 0
    peak_used_blocks: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.queried_tokens if self.queried_tokens else 0.0

    def as_dict(self) -> dict:
        return asdict(self) | {"hit_rate": self.hit_rate}


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def num_blocks_for_budget(budget_bytes: float, model_config: ModelConfig, dtype: str = "bfloat16",
                          block_size: int = 16) -> int:
    """How many KV blocks of `block_size` tokens fit in `budget_bytes` for this model."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    block_bytes = model_config.kv_bytes_per_token(dtype) * block_size
    num_blocks = int(budget_bytes // block_bytes)
    if num_blocks < 1:
        raise ValueError(
            f"KV budget of {budget_bytes:.0f} bytes holds no block of {block_size} tokens for "
            f"{model_config.name} in {dtype} ({block_bytes} bytes per block)")
    return num_blocks


def check_pool_sizes(num_blocks: int, block_size: int, num_host_blocks: int) -> None:
    if num_blocks < 1:
        raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if num_host_blocks < 0:
        raise ValueError(f"num_host_blocks must be >= 0, got {num_host_blocks}")


def too_big_reason(seq: Sequence, blocks_needed: int, num_blocks: int, block_size: int) -> str | None:
    """The rejection message shared by the managers, or None when the sequence fits."""
    if blocks_needed <= num_blocks:
        return None
    return (f"needs {blocks_needed} KV blocks of {block_size} tokens for {seq.max_tokens} tokens "
            f"(prompt {seq.prompt_len} + output {seq.request.output_len}); the pool has {num_blocks}")
