"""KV managers on hand-built cases: capacity, paging, prefix hits, dedup, swap, contiguous runs."""
from __future__ import annotations

import pytest

from testbed.kv import KV_MANAGERS, make_kv_manager, num_blocks_for_budget
from testbed.model.config import named_config
from testbed.request import Request, Sequence

ALL = ["contiguous", "paged", "prefix", "radix"]
CACHING = ["prefix", "radix"]


def seq_of(seq_id: int, prompt: int | list[int], output_len: int = 4) -> Sequence:
    tokens = prompt if isinstance(prompt, list) else None
    n = len(prompt) if tokens is not None else prompt
    return Sequence(seq_id, Request(f"r{seq_id}", 0.0, n, output_len, prompt_token_ids=tokens))


def compute(kv, seq: Sequence, num_tokens: int) -> None:
    """What a step does to the bookkeeping: cover the tokens, mark them computed, commit."""
    assert kv.allocate(seq, num_tokens)
    seq.num_computed_tokens = num_tokens
    kv.commit(seq)


def test_num_blocks_for_budget_from_the_model_shape():
    cfg = named_config("qwen2-0.5b")  # 24 layers x 2 KV heads x 64 dims x (K, V) x 2 bytes
    assert cfg.kv_bytes_per_token("bfloat16") == 24 * 2 * 64 * 2 * 2 == 12288
    assert num_blocks_for_budget(1e9, cfg, "bfloat16", 16) == int(1e9 // (12288 * 16)) == 5086
    assert num_blocks_for_budget(1e9, cfg, "float32", 16) == 2543
    with pytest.raises(ValueError, match="holds no block of 16 tokens"):
        num_blocks_for_budget(1000, cfg, "bfloat16", 16)


def test_registry_names_and_errors():
    assert KV_MANAGERS.names() == ALL
    with pytest.raises(ValueError, match="contiguous, paged, prefix, radix"):
        make_kv_manager("vattention", 8)
    with pytest.raises(ValueError, match="eviction policy 'mru'"):
        make_kv_manager("paged", 8, eviction="mru")
    with pytest.raises(ValueError, match="num_blocks must be >= 1"):
        make_kv_manager("paged", 0)
    assert make_kv_manager("radix", 8, 4, 2, "lfu").evictor.policy == "lfu"


@pytest.mark.parametrize("name", ALL)
def test_can_ever_fit_names_the_numbers(name):
    kv = make_kv_manager(name, 4, 16)
    assert kv.can_ever_fit(seq_of(0, 60, 4)) is None  # 64 tokens = 4 blocks
    reason = kv.can_ever_fit(seq_of(0, 60, 5))
    assert "needs 5 KV blocks of 16 tokens for 65 tokens (prompt 60 + output 5)" in reason
    assert "the pool has 4" in reason


@pytest.mark.parametrize("name", ["paged", "prefix", "radix"])
def test_paged_allocation_grows_block_by_block_all_or_nothing(name):
    kv = make_kv_manager(name, 4, 4)
    a, b = seq_of(0, 6), seq_of(1, 9)
    assert kv.allocate(a, 6) and a.block_table == [0, 1]
    assert kv.allocate(a, 8) and len(a.block_table) == 2  # still fits
    assert not kv.allocate(b, 9)  # needs 3, 2 free: nothing taken
    assert b.block_table == [] and kv.num_free_blocks == 2
    assert kv.allocate(b, 8) and kv.num_used_blocks == 4
    assert not kv.allocate(a, 9) and len(a.block_table) == 2
    kv.free(a)
    assert a.block_table == [] and kv.num_free_blocks == 2
    assert kv.stats.peak_used_blocks == 4 and kv.stats.allocated_blocks == 4


@pytest.mark.parametrize("name", CACHING)
def test_prefix_hits_leave_the_last_token_to_compute(name):
    kv = make_kv_manager(name, 16, 4)
    first = seq_of(0, list(range(12)))
    assert kv.lookup(first) == 0
    compute(kv, first, 12)
    kv.free(first)
    assert kv.lookup(seq_of(1, list(range(12)))) == 8  # 3 full blocks cached; the last token is not
    assert kv.lookup(seq_of(2, list(range(13)))) == 12
    assert kv.lookup(seq_of(3, list(range(6)) + [99] * 7)) == 4  # diverges in block 1
    assert kv.lookup(seq_of(4, [99] + list(range(1, 12)))) == 0  # the prefix decides
    again = seq_of(5, list(range(13)))
    assert kv.allocate(again, 13) and again.block_table[:3] == first_blocks(kv)
    assert kv.stats.hit_tokens == 12 and kv.stats.queried_tokens == 25
    assert kv.stats.hit_rate == pytest.approx(12 / 25)


def first_blocks(kv) -> list[int]:
    return sorted(kv.cached_blocks())


@pytest.mark.parametrize("name", ["paged", "contiguous"])
def test_no_sharing_without_a_prefix_cache(name):
    kv = make_kv_manager(name, 16, 4)
    first = seq_of(0, list(range(12)))
    compute(kv, first, 12)
    kv.free(first)
    again = seq_of(1, list(range(12)))
    assert kv.lookup(again) == 0 and kv.allocate(again, 12)
    assert kv.stats.hit_tokens == 0 and kv.stats.queried_tokens == 24


@pytest.mark.parametrize("name", CACHING)
def test_hits_are_shared_and_counted_once_per_holder(name):
    kv = make_kv_manager(name, 8, 4)
    a = seq_of(0, list(range(9)))
    compute(kv, a, 9)  # blocks 0, 1 cached, 2 partial
    b = seq_of(1, list(range(9)))
    assert kv.allocate(b, 9)
    assert b.block_table[:2] == a.block_table[:2] and b.block_table[2] != a.block_table[2]
    assert kv.num_used_blocks == 4
    kv.free(a)
    assert kv.num_used_blocks == 3  # the shared blocks stay with b
    kv.free(b)
    assert kv.num_used_blocks == 0 and kv.cached_blocks() == {0, 1}


@pytest.mark.parametrize("name", CACHING)
def test_blocks_computed_twice_are_merged_at_commit(name):
    kv = make_kv_manager(name, 8, 4)
    a, b = seq_of(0, list(range(9))), seq_of(1, list(range(9)))
    assert kv.allocate(a, 9) and kv.allocate(b, 9)  # both miss: 6 blocks
    for s in (a, b):
        s.num_computed_tokens = 9
        kv.commit(s)
    assert b.block_table[:2] == a.block_table[:2]  # b now reads a's copies
    assert kv.num_used_blocks == 4 and kv.num_free_blocks == 4


@pytest.mark.parametrize("name", CACHING)
def test_generated_tokens_are_cached_for_a_recompute(name):
    kv = make_kv_manager(name, 8, 4)
    s = seq_of(0, list(range(5)), output_len=8)
    compute(kv, s, 5)
    s.output_token_ids += [50, 51, 52, 53]  # decoded; the last one is not computed yet
    compute(kv, s, 8)
    kv.free(s)  # preempted by recompute
    s.num_computed_tokens = 0
    assert kv.lookup(s) == 8


@pytest.mark.parametrize("name", ALL)
def test_swap_out_and_in_move_the_computed_blocks(name):
    kv = make_kv_manager(name, 8, 4, num_host_blocks=3)
    s = seq_of(0, list(range(10)), output_len=6)  # contiguous reserves 4 blocks
    compute(kv, s, 10)
    old = list(s.block_table)
    out = kv.swap_out(s)
    assert out == list(zip(old[:3], [0, 1, 2]))  # 3 blocks hold the 10 computed tokens
    assert s.block_table == [] and kv.num_free_host_blocks == 0
    assert kv.stats.swapped_out_blocks == 3
    other = seq_of(1, 10, output_len=6)
    assert kv.allocate(other, 16)  # the device blocks were given back
    back = kv.swap_in(s)
    assert back == list(zip([0, 1, 2], s.block_table[:3]))
    assert kv.num_free_host_blocks == 3 and kv.stats.swapped_in_blocks == 3
    kv.free(s)
    kv.free(other)
    assert kv.num_used_blocks == 0


@pytest.mark.parametrize("name", ALL)
def test_swap_needs_room_on_each_side(name):
    kv = make_kv_manager(name, 4, 4, num_host_blocks=1)
    s = seq_of(0, 8, output_len=8)
    compute(kv, s, 8)
    assert kv.swap_out(s) is None and len(s.block_table) >= 2  # 2 blocks, 1 host block
    kv = make_kv_manager(name, 4, 4, num_host_blocks=4)
    s, hog = seq_of(0, 8, output_len=8), seq_of(1, 8, output_len=8)
    compute(kv, s, 8)
    assert kv.swap_out(s) is not None
    compute(kv, hog, 16)
    assert kv.swap_in(s) is None and kv.num_free_host_blocks == 2
    kv.free(s)  # freeing a swapped-out sequence gives its host blocks back
    assert kv.num_free_host_blocks == 4


def test_contiguous_reserves_the_maximum_in_one_run_first_fit():
    kv = make_kv_manager("contiguous", 8, 1)
    seqs = [seq_of(i, 1, output_len=1) for i in range(4)]  # 2 tokens each: runs of 2
    for s in seqs:
        assert kv.allocate(s, 1)
    assert [s.block_table for s in seqs] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    kv.free(seqs[0])
    kv.free(seqs[2])
    big = seq_of(9, 2, output_len=1)  # 3 blocks: 4 are free, but in runs of 2
    assert kv.num_free_blocks == 4 and kv.largest_free_run == 2
    assert not kv.allocate(big, 1)
    kv.free(seqs[1])  # runs 0-1, 2-3, 4-5 merge
    assert kv.largest_free_run == 6
    assert kv.allocate(big, 3) and big.block_table == [0, 1, 2]
    kv.free(big)
    kv.free(seqs[3])
    assert kv.largest_free_run == 8 and kv.num_free_blocks == 8
