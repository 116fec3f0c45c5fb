"""The simulated executor: no model, a step's seconds from a cost model.

Every scheduled sequence that samples gets `token_id`, a fixed id that must never be a stop
token (trace replay sets `ignore_eos`; output lengths come from the trace). Block copies of
swap preemption cost `swap_seconds_per_block` each (see `roofline.swap_seconds_per_block`) on
top of the forward pass; a step of copies alone runs no forward pass. It keeps no state.
`decode_seconds` prices a decode-only step from two numbers, for runs of them (fast-forward).
"""
from __future__ import annotations

from testbed.plan import StepPlan, StepResult
from testbed.sim.base import CostModel
from testbed.sim.features import decode_features, step_features


class SimExecutor:
    """`decode_seconds(n_decodes, sum_decode_context)`: seconds of a decode-only step, as
    `execute` gives them: `n_decodes` sequences decoding, attending to `sum_decode_context`
    keys in all (the cost model's own `decode_seconds` where it has one: quicker)."""

    def __init__(self, cost_model: CostModel, swap_seconds_per_block: float = 0.0, token_id: int = 0):
        self.cost_model = cost_model
        self.swap_seconds_per_block = swap_seconds_per_block
        self.token_id = token_id
        self.decode_seconds = getattr(cost_model, "decode_seconds", self._predict_decode)

    def execute(self, plan: StepPlan) -> StepResult:
        features = step_features(plan)
        seconds = self.cost_model.predict(features) if plan.scheduled else 0.0
        seconds += features.n_swap_blocks * self.swap_seconds_per_block
        token = self.token_id
        tokens = {s.seq.seq_id: token for s in plan.scheduled if s.samples}
        return StepResult(tokens, seconds, device_seconds=seconds, features=features)

    def _predict_decode(self, n_decodes: int, sum_decode_context: int) -> float:
        return self.cost_model.predict(decode_features(n_decodes, sum_decode_context))
