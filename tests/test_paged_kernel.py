"""The fused CUDA paged-attention decode kernel equals the gather-based reference.

The kernel runs only where MLX has its CUDA backend (an NVIDIA GPU); elsewhere those tests are
skipped with that reason.
"""
from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from testbed.engine import cuda_paged_attention
from testbed.engine.paged_attention import gather_kv
from testbed.model.kernels import attention

needs_cuda = pytest.mark.skipif(not cuda_paged_attention.available(),
                                reason="needs MLX's CUDA backend (an NVIDIA GPU)")


def reference(q, kv_pool, tables, lens, scale):
    """The gather-based attention in float32 on the CPU (a GPU float32 matmul may round
    through TF32)."""
    with mx.stream(mx.cpu):
        return _reference(q, kv_pool, tables, lens, scale)


def _reference(q, kv_pool, tables, lens, scale):
    keys, values = gather_kv(kv_pool, tables)
    width = keys.shape[2]
    mask = mx.arange(width)[None, :] < lens[:, None]
    out = attention(q[:, :, None, :], keys, values, mask[:, None, None, :], scale, "reference")
    return out[:, :, 0, :]


@needs_cuda
@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16])
@pytest.mark.parametrize("heads,kv_heads,dim,block", [(14, 2, 64, 16), (28, 4, 128, 16),
                                                      (8, 8, 32, 8), (12, 2, 128, 32)])
@pytest.mark.parametrize("n", [1, 9, 90])  # 90 sequences fill the GPU: fewer warps per block
@pytest.mark.parametrize("splits", [1, 3])  # 3: each context in parts, merged by a 2nd kernel
def test_kernel_equals_reference(dtype, heads, kv_heads, dim, block, n, splits):
    rng = np.random.default_rng(heads + dim + n)
    num_blocks = 200
    lens = rng.integers(1, 40 * block, n)
    lens[0] = 1  # a first decode after a one-token prompt
    width = int(-(-lens.max() // block)) + 3
    tables = np.stack([rng.permutation(num_blocks)[:width] for _ in range(n)]).astype(np.int32)
    q = mx.array(rng.standard_normal((n, heads, dim)).astype(np.float32)).astype(dtype)
    pool_shape = (num_blocks, block, 2 * kv_heads, dim)  # key heads, then value heads
    kv_pool = mx.array(rng.standard_normal(pool_shape).astype(np.float32)).astype(dtype)
    t, l = mx.array(tables), mx.array(lens.astype(np.int32))
    fused = cuda_paged_attention.paged_decode_attention(q, kv_pool, t, l, dim ** -0.5,
                                                        splits=splits)
    ref = reference(q, kv_pool, t, l, dim ** -0.5)
    tol = 1e-4 if dtype == mx.float32 else 2e-2
    np.testing.assert_allclose(np.array(fused.astype(mx.float32)), np.array(ref.astype(mx.float32)),
                               atol=tol, rtol=tol)


def test_long_contexts_split_only_when_blocks_leave_the_gpu_idle(monkeypatch):
    monkeypatch.setattr(cuda_paged_attention, "SPLIT_CONTEXT", True)
    splits = cuda_paged_attention.splits_for
    assert splits(1, 2, 512) == 1  # short: one part
    assert splits(200, 2, 8192) == 1  # 400 blocks already fill the GPU
    assert splits(1, 2, 4096) == 8  # parts of at least 512 tokens
    assert splits(1, 2, 32768) == 64  # 2 x 64 blocks: enough to fill the GPU twice
    assert splits(16, 2, 8192) == 8  # 9 wanted, rounded down to a power of two
    monkeypatch.setattr(cuda_paged_attention, "SPLIT_CONTEXT", False)
    assert splits(1, 2, 32768) == 1


@needs_cuda
def test_engine_with_fused_decode_equals_alone():
    from testbed.model.config import named_config
    from testbed.model.qwen2 import Qwen2Model
    from tests.test_engine import alone, make_engine, run, workload
    from tests.tiny_qwen2 import random_weights

    config = named_config("qwen2-small")  # head_dim 32: the kernel's smallest
    model = Qwen2Model(config, random_weights(config, seed=2), dtype="float32")
    engine = make_engine(model, blocks=96)
    assert engine.executor.fused_decode
    reqs = workload(n=10, seed=4)
    seqs, _ = run(engine, reqs)
    for req in reqs:
        assert seqs[req.request_id].output_token_ids == alone(model, req), req.request_id
