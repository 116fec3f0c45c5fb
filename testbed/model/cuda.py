"""What the NVIDIA GPU kernels (`cuda_*.py`, `engine/cuda_paged_attention.py`) share: the one
check for MLX's CUDA backend, and a kernel name per constant compiled into a kernel.

Constants go into a kernel's source, not into one-element arrays: such an array is
host-written managed memory, and a GPU read after the host touched its page faults it back
in (measured on an H200: the fused RMSNorm took 11 us a call that way, 3 us without).
"""
from __future__ import annotations

import functools
import struct

import mlx.core as mx


@functools.lru_cache(maxsize=None)
def _has_cuda() -> bool:
    cuda = getattr(mx, "cuda", None)
    return cuda is not None and cuda.is_available()


def available() -> bool:
    """True on an NVIDIA GPU running MLX's CUDA backend."""
    return _has_cuda() and mx.default_device() == mx.gpu


def kernel_name(prefix: str, constant: float) -> str:
    """A name unique to `constant` (MLX caches compiled kernels by name)."""
    return f"{prefix}_{struct.pack('<d', constant).hex()}"
