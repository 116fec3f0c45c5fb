"""The real engine under continuous batching equals each request generated alone.

Reference: `testbed.generate` (contiguous cache, one request at a time). Engine: the paged
KV pool driven by every combination that changes what the executor sees: chunked prefill on
and off, paged and contiguous block accounting, recompute and swap preemption forced by a
pool far smaller than the workload, and prefix caching.
"""
from __future__ import annotations

import gc
import weakref

import mlx.core as mx
import numpy as np
import pytest

from testbed.engine.engine import Engine
from testbed.engine.kv_pool import PagedKVPool
from testbed.engine.mlx_executor import MLXExecutor
from testbed.engine.paged_attention import MIN_TABLE_WIDTH, pad_tables
from testbed.generate import generate
from testbed.kv import make_kv_manager
from testbed.model.config import named_config
from testbed.model.qwen2 import Qwen2Model
from testbed.model.sampling import sample_sequences
from testbed.request import Request, SamplingParams
from testbed.sched import make_scheduler
from tests.tiny_qwen2 import random_weights

BLOCK = 8


@pytest.fixture(scope="module")
def model() -> Qwen2Model:
    config = named_config("qwen2-tiny")
    return Qwen2Model(config, random_weights(config, seed=1), dtype="float32")


def workload(n=16, seed=0, shared_prefix: int = 0):
    rng = np.random.default_rng(seed)
    prefix = rng.integers(0, 500, shared_prefix).tolist()
    reqs = []
    for i in range(n):
        prompt = prefix + rng.integers(0, 500, int(rng.integers(3, 60))).tolist()
        reqs.append(Request(f"r{i}", 0.0, len(prompt), int(rng.integers(2, 20)),
                            prompt_token_ids=prompt, sampling=SamplingParams(ignore_eos=True)))
    return reqs


def alone(model, req) -> list[int]:
    out = generate(model, [req.prompt_token_ids], SamplingParams(ignore_eos=True),
                   max_tokens=req.output_len)
    return out.completions[0].token_ids


def make_engine(model, *, scheduler="vllm", cache="paged", blocks=64, host_blocks=0,
                chunked=True, preemption="recompute", budget=64, max_seqs=8, overlap=False,
                compile_decode=False):
    kv = make_kv_manager(cache, blocks, BLOCK, host_blocks)
    sched = make_scheduler(scheduler, {"max_num_seqs": max_seqs, "max_num_batched_tokens": budget,
                                       "enable_chunked_prefill": chunked,
                                       "preemption": preemption, "max_model_len": 512}, kv)
    pool = PagedKVPool(model.config, blocks, BLOCK, "float32", host_blocks)
    return Engine(sched, MLXExecutor(model, pool, sample_sequences, compile_decode),
                  overlap=overlap)


def run(engine, requests, stagger: int = 2):
    """Add requests a few per step (continuous batching), step until all end."""
    seqs, pending, stats = {}, list(requests), {"preempted": 0, "swapped": 0, "computed": 0}
    while pending or engine.has_unfinished:
        for req in pending[:stagger]:
            seqs[req.request_id] = engine.add_request(req)
        pending = pending[stagger:]
        out = engine.step()
        stats["preempted"] += len(out.plan.preempted)
        stats["swapped"] += len(out.plan.swap_out)
        stats["computed"] += out.plan.num_batched_tokens
    return seqs, stats


@pytest.fixture(scope="module")
def reference(model):
    reqs = workload()
    return reqs, {r.request_id: alone(model, r) for r in reqs}


@pytest.mark.parametrize("scheduler,cache,chunked", [
    ("vllm", "paged", True), ("vllm", "paged", False), ("vllm", "contiguous", True),
    ("sarathi", "paged", True), ("orca", "paged", False), ("static", "paged", False),
])
def test_batched_equals_alone(model, reference, scheduler, cache, chunked):
    reqs, expected = reference
    seqs, _ = run(make_engine(model, scheduler=scheduler, cache=cache, chunked=chunked,
                              budget=64 if chunked else 128, blocks=96), reqs)
    for rid, seq in seqs.items():
        assert seq.status.value == "finished", (rid, seq.reason)
        assert seq.output_token_ids == expected[rid], rid


@pytest.mark.parametrize("overlap", [False, True])
@pytest.mark.parametrize("preemption,host_blocks", [("recompute", 0), ("swap", 64)])
def test_preemption_keeps_tokens(model, reference, preemption, host_blocks, overlap):
    reqs, expected = reference
    seqs, stats = run(make_engine(model, blocks=14, host_blocks=host_blocks,
                                  preemption=preemption, overlap=overlap), reqs, stagger=16)
    # The small pool really forced preemption: recomputed, or blocks copied out and back.
    assert stats["swapped" if preemption == "swap" else "preempted"] > 0
    for rid, seq in seqs.items():
        assert seq.status.value == "finished", (rid, seq.reason)
        assert seq.output_token_ids == expected[rid], rid


@pytest.mark.parametrize("cache", ["prefix", "radix"])
def test_prefix_cache_skips_work_and_keeps_tokens(model, cache):
    reqs = workload(n=8, seed=3, shared_prefix=4 * BLOCK)
    expected = {r.request_id: alone(model, r) for r in reqs}
    # The first request computes the shared prefix; the rest arrive once it is cached.
    cold, cold_stats = run(make_engine(model, cache="paged", blocks=128), reqs, stagger=1)
    warm, warm_stats = run(make_engine(model, cache=cache, blocks=128), reqs, stagger=1)
    assert warm_stats["computed"] < cold_stats["computed"]
    assert sum(s.num_cached_tokens for s in warm.values()) >= 7 * 4 * BLOCK
    for rid in expected:
        assert cold[rid].output_token_ids == expected[rid]
        assert warm[rid].output_token_ids == expected[rid]


@pytest.mark.parametrize("cache,compile_decode", [("paged", False), ("prefix", False),
                                                  ("paged", True)])
def test_overlapped_steps_equal_alone(model, reference, cache, compile_decode):
    """Step N+1 launched before step N's tokens are read back: same tokens, same times order."""
    reqs, expected = reference
    seqs, _ = run(make_engine(model, cache=cache, blocks=96, overlap=True,
                              compile_decode=compile_decode), reqs)
    for rid, seq in seqs.items():
        assert seq.status.value == "finished", (rid, seq.reason)
        assert seq.output_token_ids == expected[rid], rid
        assert seq.token_times == sorted(seq.token_times) and seq.finish_s == seq.token_times[-1]


def test_engines_of_a_model_share_its_compiled_decode_step():
    """A second engine on the same model reuses the first one's traces (and tokens stay
    right); the shared step does not keep a dropped model alive."""
    config = named_config("qwen2-tiny")
    model = Qwen2Model(config, random_weights(config, seed=1), dtype="float32")
    first = make_engine(model, compile_decode=True)
    second = make_engine(model, compile_decode=True)
    assert first.executor._decode_step is second.executor._decode_step
    assert make_engine(model, compile_decode=False).executor._decode_step is None
    gone = weakref.ref(model)
    del model, first, second
    gc.collect()
    assert gone() is None


@pytest.mark.parametrize("overlap", [False, True])
def test_stop_token_ends_sequence(model, reference, overlap):
    """A stop token ends a request right there, also when it is read back a step late."""
    reqs, expected = reference
    stopped = []
    for req in reqs[:6]:
        tokens = expected[req.request_id]
        stop = tokens[len(tokens) // 2]
        sampling = SamplingParams(stop_token_ids=(stop,))
        stopped.append((Request(req.request_id, 0.0, req.prompt_len, req.output_len,
                                prompt_token_ids=req.prompt_token_ids, sampling=sampling),
                        tokens[:tokens.index(stop) + 1]))
    seqs, _ = run(make_engine(model, blocks=96, overlap=overlap), [r for r, _ in stopped])
    for req, want in stopped:
        seq = seqs[req.request_id]
        assert seq.output_token_ids == want, req.request_id
        assert seq.reason == "stop" and seq.status.value == "finished"
        assert len(seq.token_times) == len(want)


def test_pool_allocated_once_and_peak_memory_bounded(model):
    engine = make_engine(model, blocks=96)
    pool = engine.executor.pool
    weights = sum(v.nbytes for v in random_weights(model.config, seed=1).values())
    mx.reset_peak_memory()
    run(engine, workload(n=8, seed=5))
    cfg = model.config
    assert len(pool.arrays()) == cfg.num_hidden_layers
    assert all(a.shape == (97, pool.block_size, 2 * cfg.num_key_value_heads, cfg.head_dim)
               for a in pool.arrays())
    peak = mx.get_peak_memory()
    assert peak <= (weights + pool.nbytes) * 1.15 + (64 << 20), (peak, weights, pool.nbytes)


def test_pad_tables_pads_rows_and_columns():
    tables = [[3, 1, 4], np.array([1, 5]), [9] * 9]
    got = pad_tables(tables, rows=4, fill=7)  # compiled steps: a power-of-two width
    assert got.dtype == np.int32 and got.shape == (4, 16)
    for row, table in zip(got, tables):
        assert list(row[:len(table)]) == list(table) and set(row[len(table):]) == {7}
    assert set(got[3]) == {7}
    assert pad_tables([[2]]).shape == (1, MIN_TABLE_WIDTH)
    assert pad_tables([[1, 2, 3], [4]], bucket=1).tolist() == [[1, 2, 3], [4, 0, 0]]
