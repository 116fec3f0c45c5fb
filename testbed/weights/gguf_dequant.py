"""Vectorized numpy dequantizers for the GGML tensor types Qwen2 GGUF files use.

Each reads the raw block bytes as llama.cpp lays them out (ggml-common.h) and returns
float32 values in file order. Float arithmetic follows ggml's order of operations.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from gguf import GGMLQuantizationType as Q

QK_K = 256  # elements per K-quant super-block


def _f16(blocks: np.ndarray, start: int) -> np.ndarray:
    """The float16 at byte `start` of each block, as a (n_blocks, 1) float32 column."""
    return np.ascontiguousarray(blocks[:, start:start + 2]).view(np.float16).astype(np.float32)


def _nibbles(packed: np.ndarray) -> np.ndarray:
    """Low nibbles of a run of bytes followed by their high nibbles."""
    return np.concatenate([packed & 0x0F, packed >> 4], axis=-1)


def dequant_f32(raw: np.ndarray) -> np.ndarray:
    return raw.view(np.float32)


def dequant_f16(raw: np.ndarray) -> np.ndarray:
    return raw.view(np.float16).astype(np.float32)


def dequant_bf16(raw: np.ndarray) -> np.ndarray:
    return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


def dequant_q8_0(blocks: np.ndarray) -> np.ndarray:
    """34 bytes -> 32 values: d (f16), 32 x int8.  w = d * q."""
    q = np.ascontiguousarray(blocks[:, 2:34]).view(np.int8)
    return _f16(blocks, 0) * q


def dequant_q4_0(blocks: np.ndarray) -> np.ndarray:
    """18 bytes -> 32 values: d (f16), 16 bytes of nibbles (low = 0..15, high = 16..31).
    w = d * (q - 8)."""
    q = _nibbles(blocks[:, 2:18]).astype(np.int8) - 8
    return _f16(blocks, 0) * q


def dequant_q5_0(blocks: np.ndarray) -> np.ndarray:
    """22 bytes -> 32 values: d (f16), 32 high bits (u32), 16 bytes of low nibbles.
    w = d * (q - 16)."""
    high = np.ascontiguousarray(blocks[:, 2:6]).view("<u4")
    high_bits = ((high >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)
    q = (_nibbles(blocks[:, 6:22]) | (high_bits << 4)).astype(np.int8) - 16
    return _f16(blocks, 0) * q


def _k_scales_mins(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eight 6-bit scales and mins packed into 12 bytes (Q4_K, Q5_K)."""
    a, b, c = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scales = np.concatenate([a & 63, (c & 0x0F) | ((a >> 6) << 4)], axis=1)
    mins = np.concatenate([b & 63, (c >> 4) | ((b >> 6) << 4)], axis=1)
    return scales.astype(np.float32)[:, :, None], mins.astype(np.float32)[:, :, None]


def _k_nibbles(packed: np.ndarray) -> np.ndarray:
    """128 bytes -> (n, 8, 32): each 32 bytes give a sub-block of low nibbles, then one of
    high nibbles."""
    chunks = packed.reshape(-1, 4, 1, 32)
    return np.concatenate([chunks & 0x0F, chunks >> 4], axis=2).reshape(-1, 8, 32)


def dequant_q4_k(blocks: np.ndarray) -> np.ndarray:
    """144 bytes -> 256 values: d, dmin (f16), 12 bytes of scales/mins, 128 bytes of nibbles;
    eight sub-blocks of 32, w = d*scale * q - dmin*min."""
    scales, mins = _k_scales_mins(blocks[:, 4:16])
    d, dmin = _f16(blocks, 0)[:, :, None], _f16(blocks, 2)[:, :, None]
    q = _k_nibbles(blocks[:, 16:144])
    return ((d * scales) * q - dmin * mins).reshape(-1, QK_K)


def dequant_q5_k(blocks: np.ndarray) -> np.ndarray:
    """176 bytes -> 256 values: as Q4_K plus 32 bytes whose bit j is the fifth bit of
    sub-block j."""
    scales, mins = _k_scales_mins(blocks[:, 4:16])
    d, dmin = _f16(blocks, 0)[:, :, None], _f16(blocks, 2)[:, :, None]
    high = blocks[:, None, 16:48] >> np.arange(8, dtype=np.uint8)[None, :, None] & 1
    q = _k_nibbles(blocks[:, 48:176]) | (high << 4)
    return ((d * scales) * q - dmin * mins).reshape(-1, QK_K)


def dequant_q6_k(blocks: np.ndarray) -> np.ndarray:
    """210 bytes -> 256 values: 128 bytes of low nibbles, 64 bytes of 2-bit highs, 16 int8
    scales (one per 16 values), d (f16).  w = d * scale * (q - 32)."""
    low = blocks[:, 0:128].reshape(-1, 2, 1, 2, 32)            # half, -, 32-byte run, byte
    low = np.concatenate([low & 0x0F, low >> 4], axis=2)       # half, nibble, run, byte
    high = blocks[:, 128:192].reshape(-1, 2, 1, 32)             # half, -, byte
    high = high >> (2 * np.arange(4, dtype=np.uint8))[None, None, :, None] & 3
    q = (low.reshape(-1, 2, 4, 32) | (high << 4)).astype(np.int8) - 32
    scales = np.ascontiguousarray(blocks[:, 192:208]).view(np.int8).astype(np.float32)
    d = _f16(blocks, 208)
    return ((d * scales)[:, :, None] * q.reshape(-1, 16, 16)).reshape(-1, QK_K)


# type -> (elements per block, bytes per block, dequantizer)
_BLOCK_DEQUANTIZERS: dict[Q, tuple[int, int, Callable[[np.ndarray], np.ndarray]]] = {
    Q.Q8_0: (32, 34, dequant_q8_0),
    Q.Q4_0: (32, 18, dequant_q4_0),
    Q.Q5_0: (32, 22, dequant_q5_0),
    Q.Q4_K: (QK_K, 144, dequant_q4_k),
    Q.Q5_K: (QK_K, 176, dequant_q5_k),
    Q.Q6_K: (QK_K, 210, dequant_q6_k),
}
_PLAIN_DEQUANTIZERS: dict[Q, tuple[int, Callable[[np.ndarray], np.ndarray]]] = {
    Q.F32: (4, dequant_f32),
    Q.F16: (2, dequant_f16),
    Q.BF16: (2, dequant_bf16),
}
SUPPORTED_TYPES = tuple(_PLAIN_DEQUANTIZERS) + tuple(_BLOCK_DEQUANTIZERS)


def dequantize(raw: np.ndarray, qtype: Q, n_elements: int, name: str = "tensor") -> np.ndarray:
    """`n_elements` float32 values (flat, file order) from the raw bytes of one tensor."""
    raw = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    if qtype in _PLAIN_DEQUANTIZERS:
        item_bytes, plain = _PLAIN_DEQUANTIZERS[qtype]
        expected_bytes, fn = n_elements * item_bytes, plain
    elif qtype in _BLOCK_DEQUANTIZERS:
        block_elems, block_bytes, fn_blocks = _BLOCK_DEQUANTIZERS[qtype]
        if n_elements % block_elems:
            raise ValueError(f"{name}: {n_elements} elements is not a multiple of the "
                             f"{qtype.name} block size {block_elems}")
        expected_bytes = n_elements // block_elems * block_bytes
        fn = lambda r: fn_blocks(r.reshape(-1, block_bytes))  # noqa: E731
    else:
        supported = ", ".join(t.name for t in SUPPORTED_TYPES)
        raise ValueError(f"{name}: tensor type {qtype.name} is not supported (supported: {supported})")
    if raw.size != expected_bytes:
        raise ValueError(f"{name}: {qtype.name} data has {raw.size} bytes, expected "
                         f"{expected_bytes} for {n_elements} elements")
    return fn(raw).astype(np.float32, copy=False).reshape(-1)
