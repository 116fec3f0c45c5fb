"""Fast-forward (the simulator taking runs of plain decode steps at once) changes nothing:
with and without it, the replay logs the same steps, requests and token times, and the KV
manager ends in the same state (every block's counters, the eviction order, the statistics),
for every scheduler and KV manager, both preemption modes, with prefix sharing, eviction,
preemption, swapping, stop tokens and arrivals that cut runs short."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim_workloads import (SCHEDULERS, Tables, Workload, assert_same_tables, busy_workload, make_kv,
                           simulate, workloads)
from testbed.kv import CachingKVManager

KV_SETUPS = [("contiguous", "lru"), ("paged", "lru"), ("prefix", "lru"), ("prefix", "fifo"),
             ("radix", "lru"), ("radix", "lfu")]


def kv_state(kv) -> dict:
    """Everything the manager's future behaviour depends on, as plain data (drains the evictor)."""
    state = {"stats": kv.stats.as_dict(), "used": kv.num_used_blocks, "free": kv.num_free_blocks}
    if isinstance(kv, CachingKVManager):
        state["blocks"] = [(b.ref_count, b.key, b.hits, b.last_access, b.inserted) for b in kv.blocks]
        state["cached"] = kv.cached_blocks()
        state["eviction_order"] = kv.evictor.pop_many(len(kv.evictor))
    return state


def assert_fast_forward_changes_nothing(w: Workload, scheduler: str, kv_name: str, eviction: str,
                                        preemption: str) -> Tables:
    fast_kv, slow_kv = make_kv(w, kv_name, eviction), make_kv(w, kv_name, eviction)
    fast = simulate(w, scheduler, fast_kv, preemption, fast_forward=True)
    slow = simulate(w, scheduler, slow_kv, preemption, fast_forward=False)
    assert slow.steps_in_runs == 0
    assert len(fast.requests) == len(w.requests)
    assert_same_tables(fast.requests, slow.requests)
    assert_same_tables(fast.steps, slow.steps)
    assert_same_tables(fast.tokens, slow.tokens)
    assert kv_state(fast_kv) == kv_state(slow_kv)
    return fast


@pytest.mark.parametrize("kv_name,eviction", KV_SETUPS)
@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_random_workloads(scheduler, kv_name, eviction):
    @settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(workloads(), st.sampled_from(["recompute", "swap"]))
    def run(w: Workload, preemption: str):
        assert_fast_forward_changes_nothing(w, scheduler, kv_name, eviction, preemption)

    run()


@pytest.mark.parametrize("kv_name,eviction", [("paged", "lru"), ("prefix", "lru"), ("radix", "lfu")])
@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_busy_workload(scheduler, kv_name, eviction):
    fast = assert_fast_forward_changes_nothing(busy_workload(), scheduler, kv_name, eviction, "swap")
    assert fast.steps_in_runs > len(fast.steps) / 5
    assert fast.ended_in_runs > 0
