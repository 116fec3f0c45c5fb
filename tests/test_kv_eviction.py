"""Exact eviction orders: the Evictor alone, then whole managers on a hand-built history."""
from __future__ import annotations

import pytest

from testbed.kv import make_kv_manager
from testbed.kv.block import Block
from testbed.kv.eviction import Evictor
from testbed.request import Request, Sequence


def blocks(**counters) -> dict[str, Block]:
    return {name: Block(i, hits=h, last_access=last, inserted=ins)
            for i, (name, (h, last, ins)) in enumerate(counters.items())}


def drain(evictor: Evictor, by_id: dict[int, str]) -> list[str]:
    out = []
    while len(evictor):
        out.append(by_id[evictor.pop()])
    return out


@pytest.mark.parametrize("policy,order", [
    ("lru", ["b", "c", "d", "a"]),  # by last access
    ("lfu", ["c", "b", "d", "a"]),  # fewest hits, ties (b, d) by last access
    ("fifo", ["d", "a", "c", "b"]),  # by insertion into the cache
])
def test_evictor_order(policy, order):
    # name=(hits, last_access, inserted)
    bs = blocks(a=(2, 9, 2), b=(1, 5, 4), c=(0, 7, 3), d=(1, 8, 1))
    evictor = Evictor(policy)
    for b in bs.values():
        evictor.add(b)
    assert drain(evictor, {b.block_id: n for n, b in bs.items()}) == order


def test_evictor_discard_and_readd_use_the_key_at_readd_time():
    bs = blocks(a=(0, 1, 1), b=(0, 2, 2), c=(0, 3, 3))
    evictor = Evictor("lru")
    for b in bs.values():
        evictor.add(b)
    evictor.discard(bs["a"])  # a is used again ...
    assert bs["a"] not in evictor and len(evictor) == 2
    bs["a"].last_access = 4  # ... and released later
    evictor.add(bs["a"])
    assert drain(evictor, {b.block_id: n for n, b in bs.items()}) == ["b", "c", "a"]
    with pytest.raises(IndexError):
        evictor.pop()


def test_evictor_sweeps_stale_entries():
    b = Block(0)
    evictor = Evictor("lru")
    for tick in range(1000):
        b.last_access = tick
        evictor.add(b)
        evictor.discard(b)
    assert len(evictor) == 0 and len(evictor._heap) <= 65
    evictor.add(b)
    with pytest.raises(ValueError, match="already evictable"):
        evictor.add(b)


def test_unknown_policy():
    with pytest.raises(ValueError, match="lru, lfu, fifo"):
        Evictor("random")


def _seq(seq_id: int, tokens: list[int]) -> Sequence:
    return Sequence(seq_id, Request(f"r{seq_id}", 0.0, len(tokens), 4, prompt_token_ids=tokens))


def _prefill_and_free(kv, seq: Sequence) -> None:
    assert kv.allocate(seq, seq.num_tokens)
    seq.num_computed_tokens = seq.num_tokens
    kv.commit(seq)
    kv.free(seq)


# History, block size 2: A=[1 2|3 4|9] is cached (a0, a1), then C=[1 2|3 4|0] hits a0 and a1,
# then B=[5 6|7 8|9] is cached (b0, b1). Ids: a0=0, a1=1, b0=2, b1=3. Then a fresh sequence
# takes one block at a time: two come from the free list, the next four are evictions.
@pytest.mark.parametrize("manager,policy,order", [
    ("prefix", "lru", ["a1", "a0", "b1", "b0"]),  # released tail first, A's before B's
    ("prefix", "lfu", ["b1", "b0", "a1", "a0"]),  # A's blocks were hit once
    ("prefix", "fifo", ["a0", "a1", "b0", "b1"]),  # insertion order, parents before children
    ("radix", "lru", ["a1", "a0", "b1", "b0"]),
    ("radix", "lfu", ["b1", "b0", "a1", "a0"]),
    ("radix", "fifo", ["a1", "a0", "b1", "b0"]),  # leaves only: a1 must go before a0
])
def test_manager_eviction_order(manager, policy, order):
    kv = make_kv_manager(manager, num_blocks=6, block_size=2, eviction=policy)
    names = {0: "a0", 1: "a1", 2: "b0", 3: "b1"}
    _prefill_and_free(kv, _seq(0, [1, 2, 3, 4, 9]))
    c = _seq(1, [1, 2, 3, 4, 0])
    assert kv.lookup(c) == 4
    _prefill_and_free(kv, c)
    b = _seq(2, [5, 6, 7, 8, 9])
    _prefill_and_free(kv, b)
    assert kv.cached_blocks() == {0, 1, 2, 3} and kv.num_free_blocks == 6
    fresh = _seq(3, list(range(100, 112)))
    evicted = []
    for k in range(1, 7):
        before = kv.cached_blocks()
        assert kv.allocate(fresh, 2 * k)
        evicted += [names[i] for i in before - kv.cached_blocks()]
    assert evicted == order
    assert kv.stats.evicted_blocks == 4 and kv.num_free_blocks == 0
    assert not kv.allocate(fresh, 14)


def test_prefix_fifo_orphans_a_child_radix_never_does():
    kv = make_kv_manager("prefix", num_blocks=4, block_size=2, eviction="fifo")
    _prefill_and_free(kv, _seq(0, [1, 2, 3, 4, 9]))  # caches 0=[1 2], 1=[3 4]
    other = _seq(1, [7, 7, 7, 7, 7, 7])
    assert kv.allocate(other, 6)  # free blocks 2, 3, then evicts block 0 (first inserted)
    assert kv.cached_blocks() == {1}  # [3 4] stays resident but unreachable
    assert kv.lookup(_seq(2, [1, 2, 3, 4, 5])) == 0
