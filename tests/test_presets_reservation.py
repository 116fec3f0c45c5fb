"""Contiguous reservation sizes (the vLLM paper's Orca Oracle / Pow2 / Max baselines), checked
against sizes computed here by plain arithmetic, and their plumbing from the cache config."""
from __future__ import annotations

import math

import pytest

from replay_runs import config
from testbed.kv import make_kv_manager
from testbed.request import Request, Sequence
from testbed.stack import build_stack

BLOCK = 16


def seq_of(prompt: int, output: int, seq_id: int = 0) -> Sequence:
    return Sequence(seq_id, Request(f"r{seq_id}", 0.0, prompt, output))


def expected_blocks(reservation: str, prompt: int, output: int, max_model_len: int) -> int:
    need = prompt + output
    if reservation == "exact":
        tokens = need
    elif reservation == "pow2":
        tokens = 1
        while tokens < need:
            tokens *= 2
        tokens = max(min(tokens, max_model_len), need)
    else:
        tokens = max_model_len
    return math.ceil(tokens / BLOCK)


@pytest.mark.parametrize("reservation", ["exact", "pow2", "max"])
@pytest.mark.parametrize("prompt,output", [(100, 30), (1, 1), (127, 1), (128, 1), (600, 100), (900, 100)])
def test_reservation_sizes(reservation, prompt, output):
    kv = make_kv_manager("contiguous", 4096, BLOCK, reservation=reservation, max_model_len=1000)
    seq = seq_of(prompt, output)
    assert kv.allocate(seq, prompt)
    assert len(seq.block_table) == expected_blocks(reservation, prompt, output, 1000)
    assert kv.num_used_blocks == len(seq.block_table)
    assert seq.block_table == list(range(len(seq.block_table)))  # one contiguous run


def test_a_reservation_larger_than_the_pool_is_rejected_up_front():
    kv = make_kv_manager("contiguous", 8, BLOCK, reservation="max", max_model_len=200)
    assert kv.can_ever_fit(seq_of(10, 10)) is not None  # 200 tokens = 13 blocks > 8
    exact = make_kv_manager("contiguous", 8, BLOCK)
    assert exact.can_ever_fit(seq_of(10, 10)) is None


def test_max_reservation_admits_fewer_sequences():
    sizes = {}
    for reservation in ("exact", "pow2", "max"):
        kv = make_kv_manager("contiguous", 64, BLOCK, reservation=reservation, max_model_len=512)
        seqs = [seq_of(100, 20, i) for i in range(64)]
        sizes[reservation] = sum(kv.allocate(s, 100) for s in seqs)
    # 64 blocks of 16 = 1024 tokens: 120 -> 8 blocks, 128 -> 8 blocks, 512 -> 32 blocks
    assert sizes == {"exact": 8, "pow2": 8, "max": 2}


def test_bad_reservation_names_and_missing_length():
    with pytest.raises(ValueError, match="reservation 'biggest'"):
        make_kv_manager("contiguous", 8, reservation="biggest")
    with pytest.raises(ValueError, match="reservation 'biggest'"):
        make_kv_manager("paged", 8, reservation="biggest")  # checked for every manager
    with pytest.raises(ValueError, match="needs max_model_len"):
        make_kv_manager("contiguous", 8, reservation="max")


def test_the_cache_config_reaches_the_manager():
    cfg = config("engine=sim", "model=qwen2-tiny", "hardware=cpu",
                 "engine.kv_memory_gb=0.01", "cache=contiguous", "cache.reservation=max",
                 "scheduler.max_model_len=256")
    kv = build_stack(cfg).engine.scheduler.kv
    assert (kv.reservation, kv.max_model_len) == ("max", 256)
    assert config("cache=contiguous")["cache"]["reservation"] == "exact"
