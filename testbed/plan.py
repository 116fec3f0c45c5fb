"""What the scheduler asks one engine step to do, and what the step gives back."""
from __future__ import annotations

from dataclasses import dataclass, field

from testbed.request import Sequence


@dataclass(slots=True)
class ScheduledSeq:
    """Compute `num_new_tokens` tokens of `seq`, from position `seq.num_computed_tokens`."""

    seq: Sequence
    num_new_tokens: int

    @property
    def samples(self) -> bool:
        """Whether this step ends with a new token for the sequence (all its tokens computed)."""
        return self.seq.num_computed_tokens + self.num_new_tokens == self.seq.num_tokens


@dataclass(slots=True)
class StepPlan:
    """One engine step. Block copies are (source block, destination block) pairs that the
    executor performs *before* running the model: swap_out device->host, swap_in host->device.
    `preempted` sequences lost their KV blocks (recompute): the executor drops any state it
    keeps for them."""

    scheduled: list[ScheduledSeq] = field(default_factory=list)
    swap_out: list[tuple[int, int]] = field(default_factory=list)
    swap_in: list[tuple[int, int]] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled and not self.swap_out and not self.swap_in


@dataclass(slots=True)
class StepResult:
    """The step's sampled tokens (seq_id -> token id, for each scheduled seq that samples)
    and how long it took (measured for the real engine, predicted for the simulator).
    `device_seconds` / `host_seconds` split the time where the executor can tell.
    `features`: the plan's `testbed.sim.features.StepFeatures`, where the executor computed
    them (the simulator prices a step by them), so the engine need not compute them again."""

    tokens: dict[int, int]
    seconds: float
    host_seconds: float = 0.0
    device_seconds: float = 0.0
    features: object | None = None
