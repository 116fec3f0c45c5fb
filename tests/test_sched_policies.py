"""Policy behaviour on hand-built workloads: who runs, in what order, who is preempted, how."""
from __future__ import annotations

from itertools import count

import pytest

from fakes import FakeExecutor, block_identity, unique_tokens
from testbed.kv import make_kv_manager
from testbed.plan import StepPlan, StepResult
from testbed.request import Request, SamplingParams, Sequence, SeqStatus
from testbed.sched import SCHEDULERS, SchedulerConfig, make_scheduler
from testbed.sched.predictors import BucketMeanPredictor, make_predictor


class Loop:
    """The replay loop over one scheduler, a KV manager and the fake executor."""

    def __init__(self, name: str, kv: str = "paged", num_blocks: int = 64, block_size: int = 4,
                 host: int = 0, next_token=unique_tokens, **config):
        self.kv = make_kv_manager(kv, num_blocks, block_size, host)
        self.sched = make_scheduler(name, SchedulerConfig(**config), self.kv)
        self.executor = FakeExecutor(block_size, next_token)
        self.now = 0.0
        self.ended: list[Sequence] = []
        self._ids = count()

    def add(self, prompt: int | list[int], output: int, **request) -> Sequence:
        tokens = prompt if isinstance(prompt, list) else None
        n = len(tokens) if tokens is not None else prompt
        i = next(self._ids)
        seq = Sequence(i, Request(f"r{i}", self.now, n, output, prompt_token_ids=tokens, **request))
        self.sched.add(seq, self.now)
        return seq

    def step(self) -> StepPlan:
        plan = self.sched.schedule(self.now)
        result = self.executor.execute(plan) if not plan.is_empty else StepResult({}, 0.0)
        self.now += result.seconds
        self.ended += self.sched.update(plan, result, self.now)
        return plan

    def run(self, max_steps: int = 2000) -> list[StepPlan]:
        plans = []
        while self.sched.has_unfinished:
            plans.append(self.step())
            assert len(plans) < max_steps
        return plans


def batch(plan: StepPlan) -> list[tuple[str, int]]:
    return [(s.seq.request.request_id, s.num_new_tokens) for s in plan.scheduled]


def test_registry_has_every_policy():
    assert SCHEDULERS.names() == ["lpm", "mlfq", "orca", "priority", "sarathi", "sjf", "static", "vllm"]
    with pytest.raises(ValueError, match="unknown scheduler 'fcfs'"):
        make_scheduler("fcfs", SchedulerConfig(), make_kv_manager("paged", 8))


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="unknown key.*max_batch"):
        SchedulerConfig.from_dict({"max_batch": 3})
    with pytest.raises(ValueError, match="preemption must be one of recompute, swap"):
        SchedulerConfig(preemption="kill")
    with pytest.raises(ValueError, match="max_num_batched_tokens must be >= 1"):
        SchedulerConfig(max_num_batched_tokens=0)
    with pytest.raises(ValueError, match="unknown length predictor 'bert'"):
        make_scheduler("sjf", {"predictor": "bert"}, make_kv_manager("paged", 8))
    assert make_scheduler("vllm", {"max_num_seqs": 3}, make_kv_manager("paged", 8)).config.max_num_seqs == 3


# -- vllm -------------------------------------------------------------------------------------

def test_vllm_runs_running_first_then_chunks_new_prompts_into_the_budget():
    loop = Loop("vllm", max_num_batched_tokens=10)
    loop.add(8, 3), loop.add(8, 3)
    assert batch(loop.step()) == [("r0", 8), ("r1", 2)]
    assert batch(loop.step()) == [("r0", 1), ("r1", 6)]
    assert batch(loop.step()) == [("r0", 1), ("r1", 1)]


def test_vllm_without_chunked_prefill_runs_a_prompt_whole_or_not_at_all():
    loop = Loop("vllm", max_num_batched_tokens=10, enable_chunked_prefill=False)
    loop.add(8, 3), loop.add(8, 3), loop.add(1, 3)
    assert batch(loop.step()) == [("r0", 8)]  # r1 does not fit the 2 left; FCFS keeps r2 behind it
    assert batch(loop.step()) == [("r0", 1), ("r1", 8), ("r2", 1)]


def _two_growing(name: str, **kw) -> tuple[Loop, Sequence, Sequence]:
    """Two sequences of 4 prompt + 8 output tokens in a pool of 4 blocks of 4: at position 8
    the first needs a third block and someone must go."""
    loop = Loop(name, num_blocks=4, **kw)
    return loop, loop.add(4, 8), loop.add(4, 8)


def test_vllm_preempts_the_newest_by_recompute_and_it_resumes():
    loop, a, b = _two_growing("vllm")
    plans = [loop.step() for _ in range(6)]
    assert [batch(p) for p in plans[:5]] == [[("r0", 4), ("r1", 4)]] + [[("r0", 1), ("r1", 1)]] * 4
    assert plans[5].preempted == [b] and batch(plans[5]) == [("r0", 1)]
    assert b.status is SeqStatus.WAITING and b.block_table == [] and b.num_computed_tokens == 0
    assert b.num_preemptions == 1 and b.num_output_tokens == 5  # kept, to be recomputed
    assert loop.sched.waiting.peek() is b
    plans = loop.run()
    resumed = next(p for p in plans if b in [s.seq for s in p.scheduled])
    assert batch(resumed)[-1] == ("r1", 9)  # prompt + 5 generated tokens, recomputed
    assert a.num_output_tokens == b.num_output_tokens == 8


def test_swap_preemption_moves_blocks_out_and_back_and_resumes_where_it_stopped():
    loop, a, b = _two_growing("vllm", host=4, preemption="swap")
    for _ in range(5):
        loop.step()
    b_blocks, b_computed = list(b.block_table), b.num_computed_tokens
    plan = loop.step()
    assert plan.swap_out == list(zip(b_blocks, [0, 1])) and not plan.preempted
    assert b.status is SeqStatus.SWAPPED and loop.sched.num_swapped == 1
    assert b.num_computed_tokens == b_computed == 8 and b.block_table == []
    while not (plan := loop.step()).swap_in:
        assert b.status is SeqStatus.SWAPPED
    assert [h for h, _ in plan.swap_in] == [0, 1] and [d for _, d in plan.swap_in] == b.block_table[:2]
    assert batch(plan)[-1] == ("r1", 1)  # a decode: nothing recomputed
    assert all(loop.executor.device[b.block_table[i]] == block_identity(b, i, 4) for i in range(2))
    loop.run()
    assert b.num_preemptions == 1 and b.num_output_tokens == 8
    assert loop.kv.stats.swapped_out_blocks == loop.kv.stats.swapped_in_blocks == 2


def test_swap_falls_back_to_recompute_when_the_host_pool_is_full():
    loop, a, b = _two_growing("vllm", host=1, preemption="swap")
    plans = [loop.step() for _ in range(6)]
    assert plans[5].preempted == [b] and not plans[5].swap_out
    assert b.status is SeqStatus.WAITING


def test_a_swapped_sequence_comes_back_before_new_waiting_ones():
    loop, a, b = _two_growing("vllm", host=4, preemption="swap")
    for _ in range(6):
        loop.step()
    assert b.status is SeqStatus.SWAPPED
    c = loop.add(4, 2)
    plans = loop.run()
    swap_in_step = next(i for i, p in enumerate(plans) if p.swap_in)
    c_step = next(i for i, p in enumerate(plans) if c in [s.seq for s in p.scheduled])
    assert swap_in_step <= c_step


# -- sarathi, static, orca --------------------------------------------------------------------

def test_sarathi_runs_every_decode_before_prefill_chunks_sized_by_the_leftover_budget():
    loop = Loop("sarathi", max_num_batched_tokens=8)
    loop.add(3, 5)
    loop.step()
    loop.add(20, 2)  # r1: a long prompt, chunked
    loop.add(2, 5)
    assert batch(loop.step()) == [("r0", 1), ("r1", 7)]
    assert batch(loop.step()) == [("r0", 1), ("r1", 7)]  # r1's ongoing chunk, still after the decode
    plan = loop.step()
    assert batch(plan) == [("r0", 1), ("r1", 6), ("r2", 1)]


def test_static_admits_nothing_while_a_batch_runs():
    loop = Loop("static", max_num_seqs=3)
    a, b = loop.add(4, 2), loop.add(4, 6)
    loop.step()
    c = loop.add(4, 2)
    loop.run()
    assert c.first_scheduled_s >= b.finish_s > a.finish_s


def test_static_batch_prefills_together_within_the_budget():
    loop = Loop("static", max_num_seqs=8, max_num_batched_tokens=10)
    for _ in range(4):
        loop.add(4, 2)
    assert batch(loop.step()) == [("r0", 4), ("r1", 4)]  # r2 would exceed the budget
    assert batch(loop.step()) == [("r0", 1), ("r1", 1)]


def test_orca_reserves_the_maximum_length_before_admitting():
    loop = Loop("orca", num_blocks=6)
    a = loop.add(4, 12)  # 16 tokens: 4 blocks reserved at once
    b = loop.add(4, 8)  # 12 tokens: 3 blocks, only 2 left
    plan = loop.step()
    assert batch(plan) == [("r0", 4)] and len(a.block_table) == 4
    loop.run()
    assert b.first_scheduled_s >= a.finish_s and b.num_preemptions == 0


def test_static_and_orca_reject_a_prompt_over_the_budget():
    for name in ("static", "orca"):
        loop = Loop(name, max_num_batched_tokens=16, enable_chunked_prefill=True)
        seq = loop.add(17, 2)
        assert seq.status is SeqStatus.REJECTED and "exceeds the step token budget 16" in seq.reason


# -- priority, sjf, lpm -----------------------------------------------------------------------

def test_priority_admits_the_most_important_first():
    loop = Loop("priority", max_num_seqs=1)
    for p in (2, 0, 1, 0):
        loop.add(4, 1, priority=p)
    loop.run()
    order = sorted(loop.ended, key=lambda s: s.first_scheduled_s)
    assert [s.request.request_id for s in order] == ["r1", "r3", "r2", "r0"]


def test_priority_preempts_the_least_important_not_the_newest():
    loop = Loop("priority", num_blocks=6)
    low = loop.add(4, 8, priority=2)
    loop.step()
    high, mid = loop.add(4, 8, priority=0), loop.add(4, 8, priority=1)
    preempted = [s for _ in range(8) for s in loop.step().preempted]
    assert preempted and preempted[0] is low
    loop.run()
    assert all(s.status is SeqStatus.FINISHED for s in (low, high, mid))


def test_vllm_in_the_same_situation_preempts_the_newest():
    loop = Loop("vllm", num_blocks=6)
    loop.add(4, 8, priority=2)
    loop.step()
    loop.add(4, 8, priority=0)
    newest = loop.add(4, 8, priority=1)
    preempted = [s for _ in range(8) for s in loop.step().preempted]
    assert preempted[0] is newest


def test_sjf_runs_the_shortest_predicted_job_first():
    loop = Loop("sjf", max_num_seqs=1)
    for n in (5, 2, 9, 1):
        loop.add(4, n)
    loop.run()
    order = sorted(loop.ended, key=lambda s: s.first_scheduled_s)
    assert [s.request.output_len for s in order] == [1, 2, 5, 9]


def test_learned_predictor_uses_bucket_means_then_the_global_mean_then_the_default():
    p = BucketMeanPredictor(default_len=50)
    short, long_ = Request("a", 0, 10, 1), Request("b", 0, 1000, 1)
    assert p.predict(short) == 50
    for prompt_len, outputs in ((9, 4), (12, 8), (900, 100)):
        seq = Sequence(0, Request("x", 0, prompt_len, 200))
        seq.output_token_ids += [1] * outputs
        p.observe(seq)
    assert p.predict(short) == 6  # prompts of 8..15 tokens: (4 + 8) / 2
    assert p.predict(long_) == 100
    assert p.predict(Request("c", 0, 100, 1)) == pytest.approx(112 / 3)  # empty bucket: global mean
    assert isinstance(make_predictor(SchedulerConfig(predictor="learned")), BucketMeanPredictor)


def test_sjf_with_the_learned_predictor_learns_from_finished_requests():
    loop = Loop("sjf", max_num_seqs=1, predictor="learned", predictor_default_len=10)
    loop.add(40, 30), loop.add(4, 2)  # teaches: 32..63-token prompts give 30 tokens, 4..7 give 2
    loop.run()
    long_, short = loop.add(40, 2), loop.add(4, 30)  # the predictions are wrong this time
    assert long_.policy_state["predicted_len"] == 30 and short.policy_state["predicted_len"] == 2
    loop.run()
    assert short.first_scheduled_s < long_.first_scheduled_s  # the oracle would do the opposite


def test_lpm_admits_the_longest_cached_prefix_first():
    doc = list(range(100, 116))
    for max_sorted, expected in ((128, ["r2", "r3", "r1"]), (0, ["r1", "r2", "r3"])):
        loop = Loop("lpm", kv="prefix", max_num_seqs=1, lpm_max_sorted=max_sorted)
        loop.add(doc + [1], 1)
        loop.run()
        loop.add([7] * 17, 1), loop.add(doc + [2], 1), loop.add(doc[:8] + [3] * 9, 1)
        assert [loop.kv.lookup(s) for s in loop.sched.waiting] == [0, 16, 8]
        loop.run()
        order = sorted(loop.ended[1:], key=lambda s: s.first_scheduled_s)
        assert [s.request.request_id for s in order] == expected


# -- mlfq -------------------------------------------------------------------------------------

def _mlfq(**kw) -> Loop:
    return Loop("mlfq", mlfq_levels=3, mlfq_base_quantum=2, mlfq_join_tokens=8, **kw)


def test_mlfq_skip_join_by_prompt_size_and_demotion_after_each_quantum():
    loop = _mlfq()
    levels = [loop.add(n, 20).policy_state["level"] for n in (8, 9, 16, 17, 40)]
    assert levels == [0, 1, 1, 2, 2]
    loop = _mlfq()
    seq = loop.add(4, 20)
    seen = []
    for _ in range(9):
        loop.step()
        seen.append(seq.policy_state["level"])
    assert seen == [0, 1, 1, 1, 1, 2, 2, 2, 2]  # quanta of 2, then 4 iterations; 2 is the last level


def test_mlfq_runs_higher_levels_first_while_lower_ones_keep_their_kv():
    loop = _mlfq(max_num_seqs=1, mlfq_starvation_s=100.0)
    old = loop.add(4, 30)
    for _ in range(4):
        loop.step()
    assert old.policy_state["level"] == 1
    new = loop.add(4, 2)  # level 0: runs its 2 iterations before old gets the batch back
    for n in (4, 1):
        assert batch(loop.step()) == [(new.request.request_id, n)]
        assert old.status is SeqStatus.RUNNING and old.block_table  # kept, not scheduled
    assert new.status is SeqStatus.FINISHED
    assert batch(loop.step()) == [(old.request.request_id, 1)]


def test_mlfq_promotes_a_starving_sequence_to_the_top_level():
    loop = _mlfq(max_num_seqs=1, mlfq_starvation_s=0.05)
    old = loop.add(4, 40)
    for _ in range(6):
        loop.step()
    assert old.policy_state["level"] == 2
    loop.add(4, 40), loop.add(4, 40)  # higher-level work for 12 iterations before they reach level 2
    ran = [old in [s.seq for s in loop.step().scheduled] for _ in range(8)]
    assert any(ran) and old.policy_state["level"] <= 1  # promoted after ~5 steps of 0.01 s


def test_mlfq_admission_preempts_lower_levels_only():
    loop = Loop("mlfq", num_blocks=4, max_num_seqs=4, mlfq_levels=3, mlfq_base_quantum=2,
                mlfq_join_tokens=16, mlfq_starvation_s=100.0)
    old = loop.add(4, 8)
    for _ in range(6):
        loop.step()  # old: level 2, 3 blocks
    assert old.policy_state["level"] == 2 and len(old.block_table) == 3
    new = loop.add(8, 4)  # level 0, needs 2 blocks: only 1 free
    plan = loop.step()
    assert plan.preempted == [old] and batch(plan) == [(new.request.request_id, 8)]
    peer = loop.add(12, 4)  # level 0 too, needs 3 blocks, 2 free: cannot preempt its equal
    plan = loop.step()
    assert not plan.preempted and peer.status is SeqStatus.WAITING


# -- abort, rejection, stop -------------------------------------------------------------------

@pytest.mark.parametrize("where", ["waiting", "running", "swapped"])
def test_abort_frees_blocks_and_is_reported(where):
    loop, a, b = _two_growing("vllm", host=4, preemption="swap")
    steps = {"waiting": 0, "running": 2, "swapped": 6}[where]
    for _ in range(steps):
        loop.step()
    assert b.status.value == where
    assert loop.sched.abort(b.seq_id, loop.now) is b
    assert b.status is SeqStatus.ABORTED and b.block_table == [] and b.reason == "aborted"
    assert loop.kv.num_free_host_blocks == 4
    assert loop.sched.abort(b.seq_id, loop.now) is None
    loop.run()
    assert b in loop.ended and a.status is SeqStatus.FINISHED
    assert loop.kv.num_used_blocks == 0


def test_abort_during_a_step_keeps_the_blocks_until_its_update():
    loop = Loop("vllm")
    seq = loop.add(4, 3)
    plan = loop.sched.schedule(0.0)
    assert loop.sched.abort(seq.seq_id, 0.0) is seq and seq.block_table  # the executor still reads them
    result = loop.executor.execute(plan)
    assert loop.sched.update(plan, result, 0.1) == [seq]
    assert seq.num_computed_tokens == 0 and not seq.output_token_ids
    assert seq.block_table == [] and loop.kv.num_used_blocks == 0


def test_rejections_name_the_numbers_and_are_reported_by_the_next_update():
    loop = Loop("vllm", num_blocks=4, block_size=4, max_model_len=40, max_num_batched_tokens=8,
                enable_chunked_prefill=False)
    too_long = loop.add(30, 11)
    over_budget = loop.add(9, 1)
    too_big = loop.add(8, 9)  # 17 tokens: 5 blocks of 4
    assert "prompt 30 + output 11 = 41 tokens > max_model_len 40" in too_long.reason
    assert "prompt of 9 tokens exceeds the step token budget 8" in over_budget.reason
    assert "needs 5 KV blocks" in too_big.reason and "the pool has 4" in too_big.reason
    assert loop.sched.has_unfinished and loop.sched.num_waiting == 0
    assert loop.step().is_empty and loop.ended == [too_long, over_budget, too_big]
    assert not loop.sched.has_unfinished
    assert all(s.status is SeqStatus.REJECTED and s.finish_s == 0.0 for s in loop.ended)


def test_a_recompute_longer_than_the_budget_is_chunked_even_without_chunked_prefill():
    loop, a, b = _two_growing("vllm", max_num_batched_tokens=6, enable_chunked_prefill=False)
    loop.run()
    assert b.num_preemptions >= 1 and b.num_output_tokens == 8


def test_stop_tokens_end_a_sequence_unless_eos_is_ignored():
    stop = SamplingParams(stop_token_ids=(1002,))
    loop = Loop("vllm", next_token=lambda s: 1000 + s.num_output_tokens)
    stopped = loop.add(4, 10, sampling=stop)
    ignoring = loop.add(4, 10, sampling=SamplingParams(stop_token_ids=(1002,), ignore_eos=True))
    loop.run()
    assert stopped.reason == "stop" and stopped.output_token_ids == [1000, 1001, 1002]
    assert ignoring.reason == "length" and ignoring.num_output_tokens == 10


def test_token_times_and_first_token():
    loop = Loop("vllm", max_num_batched_tokens=4)
    seq = loop.add(6, 3)
    plans = loop.run()
    assert len(plans) == 4 and seq.first_scheduled_s == 0.0
    assert seq.first_token_s == seq.token_times[0] < seq.token_times[1] < seq.token_times[2] == seq.finish_s


def test_bad_requests_are_errors():
    loop = Loop("vllm")
    with pytest.raises(ValueError, match="output_len must be >= 1"):
        loop.add(4, 0)
    with pytest.raises(ValueError, match="prompt_token_ids has 2 ids but prompt_len is 3"):
        loop.sched.add(Sequence(99, Request("x", 0, 3, 1, prompt_token_ids=[1, 2])), 0.0)
    seq = loop.add(4, 2)
    with pytest.raises(ValueError, match="already in the scheduler"):
        loop.sched.add(seq, 0.0)
    plan = loop.sched.schedule(0.0)
    with pytest.raises(ValueError, match="no token for sequence"):
        loop.sched.update(plan, StepResult({}, 0.1), 0.1)
