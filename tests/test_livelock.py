"""A replay that can only go round in circles ends with an error that says so, instead of
stepping forever: the driver's livelock watch."""
import pytest

from sim_workloads import STEP_S, Workload, make_kv, simulate
from testbed.replay.driver import LivelockWatch, StalledError
from testbed.request import Request, SamplingParams


def two_pool_fillers(num_blocks: int) -> Workload:
    """Two requests that each need all of a 6-block pool (4 tokens a block), under MLFQ with
    a 2-token step budget, one sequence a step and starvation after 3 steps: the pool changes
    hands every few steps, and recompute preemption throws the loser's work away each time."""
    requests = [Request("a", 0.0, 10, 12, sampling=SamplingParams(ignore_eos=True)),
                Request("b", 0.0, 17, 6, sampling=SamplingParams(ignore_eos=True))]
    config = dict(max_num_seqs=1, max_num_batched_tokens=2, max_model_len=100,
                  enable_chunked_prefill=True, mlfq_levels=3, mlfq_base_quantum=3,
                  mlfq_join_tokens=8, mlfq_starvation_s=3 * STEP_S)
    return Workload(requests, 4, num_blocks, 0, config)


def test_a_livelock_ends_the_replay_with_a_clear_error():
    w = two_pool_fillers(num_blocks=6)
    with pytest.raises(StalledError, match="livelock: 10000 steps in a row computed nothing new"):
        simulate(w, "mlfq", make_kv(w, "paged", "lru"), "recompute", fast_forward=False)


def test_the_same_requests_finish_with_room_to_spare():
    w = two_pool_fillers(num_blocks=12)
    tables = simulate(w, "mlfq", make_kv(w, "paged", "lru"), "recompute", fast_forward=False)
    assert sorted(r["status"] for r in tables.requests) == ["finished", "finished"]


class _Item:
    def __init__(self, seq):
        self.seq = seq


class _Seq:
    def __init__(self, seq_id, computed):
        self.seq_id, self.num_computed_tokens = seq_id, computed


def test_the_watch_counts_only_steps_that_bring_nothing_new():
    watch = LivelockWatch(patience=3)
    assert not watch.stalled([_Item(_Seq(1, 4))], [])  # new work
    assert not watch.stalled([_Item(_Seq(1, 2))], [])  # recomputing: 1 step without news
    assert not watch.stalled([_Item(_Seq(1, 4))], [])  # 2
    watch.progressed()  # a run of decode steps
    assert not watch.stalled([_Item(_Seq(1, 4))], [])  # 1 again
    assert not watch.stalled([_Item(_Seq(1, 4))], [])  # 2
    assert watch.stalled([_Item(_Seq(1, 3))], [])  # 3: stalled
