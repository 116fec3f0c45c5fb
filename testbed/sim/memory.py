"""Does a model fit a device, and how many KV blocks does the rest of its memory hold?

Of a device's memory, `memory_utilization` is usable (the rest: runtime context, activations,
fragmentation; vLLM's default is 0.9). The weights come first; a KV pool of at least
`min_kv_tokens` (at least one block) must fit in what remains. With tensor parallelism each
device holds 1/tp of the weights and of every KV block (its share of the heads).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from testbed.model.config import ModelConfig
from testbed.sim.hardware import HardwareProfile, dtype_bytes


class DoesNotFitError(ValueError):
    """The model, or a minimal KV pool next to it, does not fit the device's memory."""


@dataclass(frozen=True, slots=True)
class MemoryFit:
    """Per-device bytes of the weights and of the KV pool, and the pool's size in blocks."""

    weight_bytes: float
    kv_bytes: float
    block_bytes: float
    num_blocks: int


def check_memory_fit(model: ModelConfig, hardware: HardwareProfile, dtype: str = "bfloat16",
                     block_size: int = 16, *, min_kv_tokens: int = 0,
                     kv_memory_bytes: float | None = None, memory_utilization: float = 0.9,
                     tensor_parallel: int = 1) -> MemoryFit:
    """Size the KV pool of `model` on `hardware`: all memory left after the weights, or
    `kv_memory_bytes` per device when given. Raises DoesNotFitError saying what is short."""
    if not 0 < memory_utilization <= 1:
        raise ValueError(f"memory_utilization must be in (0, 1], got {memory_utilization}")
    if block_size < 1 or tensor_parallel < 1:
        raise ValueError(f"block_size ({block_size}) and tensor_parallel ({tensor_parallel}) must be >= 1")
    tp = tensor_parallel
    usable = hardware.memory_bytes * memory_utilization
    weights = model.num_params() * dtype_bytes(dtype) / tp
    per_device = f" per device (tensor_parallel={tp})" if tp > 1 else ""
    has = (f"{hardware.name} has {_gb(hardware.memory_bytes)} "
           f"({_gb(usable)} usable at memory_utilization {memory_utilization:g})")
    if weights > usable:
        raise DoesNotFitError(f"{model.name} {dtype} needs {_gb(weights)} of weights{per_device}; {has}")
    left = usable - weights
    block_bytes = block_size * model.kv_bytes_per_token(dtype) / tp
    min_blocks = max(1, math.ceil(min_kv_tokens / block_size))
    if kv_memory_bytes is not None:
        if kv_memory_bytes > left:
            raise DoesNotFitError(
                f"{model.name} {dtype}: a KV pool of {_gb(kv_memory_bytes)}{per_device} does not fit "
                f"next to {_gb(weights)} of weights; {has}, {_gb(left)} left for the KV pool")
        left = kv_memory_bytes
    num_blocks = int(left // block_bytes)
    if num_blocks < min_blocks:
        raise DoesNotFitError(
            f"{model.name} {dtype}: {_gb(left)} for the KV pool{per_device} holds {num_blocks} "
            f"blocks of {block_size} tokens, fewer than the {min_blocks} that {min_kv_tokens} "
            f"tokens need ({has}, {_gb(weights)} of it weights)")
    return MemoryFit(weights, num_blocks * block_bytes, block_bytes, num_blocks)


def _gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.3g} GB"
