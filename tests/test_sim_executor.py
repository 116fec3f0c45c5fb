"""The simulated executor: tokens for the sequences that sample, seconds from the cost model
plus block copies."""
import pytest

from testbed.model.config import named_config
from testbed.plan import ScheduledSeq, StepPlan
from testbed.request import Request, Sequence
from testbed.sim.executor import SimExecutor
from testbed.sim.features import StepFeatures
from testbed.sim.hardware import load_profile
from testbed.sim.roofline import RooflineCostModel, swap_seconds_per_block


class CountingCost:
    """Prices a step at 1 ms per batched token and records what it saw."""

    def __init__(self):
        self.seen: list[StepFeatures] = []

    def predict(self, features: StepFeatures) -> float:
        self.seen.append(features)
        return 1e-3 * features.n_batched_tokens


def seq(seq_id, prompt_len, generated=0, computed=0):
    s = Sequence(seq_id, Request(f"r{seq_id}", 0.0, prompt_len, 50))
    s.output_token_ids = [5] * generated
    s.num_computed_tokens = computed
    return s


def test_tokens_only_for_sequences_that_sample():
    plan = StepPlan([
        ScheduledSeq(seq(3, 100, computed=0), 64),  # first chunk of a prompt: no token
        ScheduledSeq(seq(4, 100, computed=64), 36),  # last chunk: samples
        ScheduledSeq(seq(5, 10, generated=2, computed=11), 1),  # decode
    ])
    cost = CountingCost()
    result = SimExecutor(cost).execute(plan)
    assert result.tokens == {4: 0, 5: 0}
    assert result.seconds == pytest.approx(0.101)
    assert result.device_seconds == result.seconds
    assert cost.seen[0].n_prefill_seqs == 2 and cost.seen[0].n_decode_seqs == 1


def test_token_id_is_configurable():
    result = SimExecutor(CountingCost(), token_id=42).execute(StepPlan([ScheduledSeq(seq(0, 5), 5)]))
    assert result.tokens == {0: 42}


def test_swaps_add_their_cost_and_a_copy_only_step_runs_no_forward_pass():
    cost = CountingCost()
    ex = SimExecutor(cost, swap_seconds_per_block=0.5)
    copies_only = ex.execute(StepPlan([], swap_out=[(1, 2), (3, 4)]))
    assert copies_only.seconds == 1.0 and copies_only.tokens == {} and cost.seen == []
    mixed = ex.execute(StepPlan([ScheduledSeq(seq(0, 10, 1, 10), 1)], swap_in=[(7, 8)]))
    assert mixed.seconds == pytest.approx(0.5 + 1e-3)


def test_with_the_roofline():
    model, h100 = named_config("qwen2-0.5b"), load_profile("h100")
    rf = RooflineCostModel(model, h100)
    per_block = swap_seconds_per_block(model, h100, block_size=16)
    plan = StepPlan([ScheduledSeq(seq(i, 30, 3, 32), 1) for i in range(4)], swap_out=[(0, 0)])
    result = SimExecutor(rf, per_block).execute(plan)
    assert result.seconds > h100.step_overhead_s + per_block
    assert sorted(result.tokens) == [0, 1, 2, 3]
