"""The prefix manager under LRU defers private blocks (indexed only when their live sequence
lets go of them; a finished sequence's retired as one run): every lookup, hit, eviction and
block id is the same as indexing each block once it is committed (the same manager with
deferral off), for every scheduler, both preemption modes, fast-forward on and off."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim_workloads import (SCHEDULERS, Workload, assert_same_tables, busy_workload, make_kv,
                           simulate, workloads)
from testbed.kv import PrefixKVManager
from testbed.kv.eviction import Evictor
from testbed.kv.block import Block


class IndexingEverything(PrefixKVManager):
    defers_private = False


def indexing_everything(w: Workload) -> IndexingEverything:
    return IndexingEverything(w.num_blocks, w.block_size, w.num_host_blocks, "lru")


def kv_state(kv, retired: set[int]) -> dict:
    """The manager's state apart from which blocks sit in the index (drains the evictor):
    `retired` blocks keep no counters, and indexing takes ticks of the logical clock, so the
    others' release times compare by their order."""
    kept = [b for b in kv.blocks if b.block_id not in retired]
    return {"stats": kv.stats.as_dict(), "used": kv.num_used_blocks, "cached": kv.cached_blocks(),
            "ref_counts": {b.block_id: b.ref_count for b in kept},
            "release_order": [b.block_id for b in sorted(kept, key=lambda b: (b.last_access, b.block_id))],
            "eviction_order": kv.evictor.pop_many(len(kv.evictor))}


def assert_deferral_changes_nothing(w: Workload, scheduler: str, preemption: str,
                                    fast_forward: bool) -> PrefixKVManager:
    deferring, reference = make_kv(w, "prefix", "lru"), indexing_everything(w)
    a = simulate(w, scheduler, deferring, preemption, fast_forward)
    b = simulate(w, scheduler, reference, preemption, fast_forward)
    assert_same_tables(a.requests, b.requests)
    assert_same_tables(a.steps, b.steps)
    assert_same_tables(a.tokens, b.tokens)
    retired = set(deferring.evictor.retired())
    assert kv_state(deferring, retired) == kv_state(reference, retired)
    return deferring


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_random_workloads(scheduler):
    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(workloads(), st.sampled_from(["recompute", "swap"]), st.booleans())
    def run(w: Workload, preemption: str, fast_forward: bool):
        assert_deferral_changes_nothing(w, scheduler, preemption, fast_forward)

    run()


@pytest.mark.parametrize("preemption", ["recompute", "swap"])
def test_busy_workload_retires_and_defers(preemption):
    w = busy_workload()
    w.num_blocks = 45  # preemptions, so some private blocks are indexed when let go
    kv = make_kv(w, "prefix", "lru")
    retired = []
    add_retired = kv.evictor.add_retired
    kv.evictor.add_retired = lambda blocks, tick: (retired.append(len(blocks)), add_retired(blocks, tick))
    assert_deferral_changes_nothing(w, "vllm", preemption, fast_forward=True)
    simulate(w, "vllm", kv, preemption, fast_forward=True)
    assert sum(retired) > 100 and kv.stats.evicted_blocks > 0


def test_retired_blocks_keep_their_place_and_are_taken_in_slices():
    evictor, blocks = Evictor("lru"), [Block(i, last_access=i) for i in range(8)]
    evictor.add(blocks[0])
    evictor.add_retired([1, 2, 3, 4], first_tick=1)
    evictor.add(blocks[5])
    evictor.discard(blocks[0])
    assert len(evictor) == 5 and blocks[2] not in evictor
    assert evictor.pop_many(2) == [1, 2]
    assert list(evictor.retired()) == [3, 4]
    assert evictor.pop_many(3) == [3, 4, 5]
    with pytest.raises(ValueError, match="before the last"):
        evictor.add(blocks[6])
        evictor.add_retired([7], first_tick=6)
    with pytest.raises(ValueError, match="need the lru policy"):
        Evictor("lfu").add_retired([7], first_tick=9)


def test_retired_blocks_interleave_with_out_of_order_ones_by_tick():
    evictor, blocks = Evictor("lru"), [Block(i, last_access=i) for i in range(6)]
    evictor.add_retired([2, 3, 4], first_tick=2)
    evictor.add(blocks[5])
    blocks[1].last_access = 3.5  # came back out of order: it goes between retired 3 and 4
    evictor.add(blocks[1])
    assert evictor.pop_many(5) == [2, 3, 1, 4, 5]
