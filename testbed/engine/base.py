"""The executor seam: the only part that differs between the real engine and the simulator."""
from __future__ import annotations

from typing import Protocol

from testbed.plan import StepPlan, StepResult


class Executor(Protocol):
    """Runs one step the scheduler planned: block copies first (swap out, then swap in), then
    the model over every scheduled sequence, returning a token for each one that samples."""

    def execute(self, plan: StepPlan) -> StepResult: ...
