"""The cost-model seam: a step's shape in, its predicted seconds out.

A cost model prices the model's forward pass over one step (its fixed overhead included).
Block copies of swap preemption are priced by the executor from the host link
(`testbed.sim.roofline.swap_seconds_per_block`), so a model fitted on steps without swaps
never prices them at zero. Implementations are picked by name from `COST_MODELS`.
"""
from __future__ import annotations

from typing import Protocol

from testbed.registry import Registry
from testbed.sim.features import StepFeatures


class CostModel(Protocol):
    """A model may also offer `decode_seconds(n_decodes, sum_decode_context)`, equal to
    `predict(decode_features(...))` but quicker: the simulator's runs of decode steps use it."""

    def predict(self, features: StepFeatures) -> float:
        """Seconds the model's forward pass over this step takes."""
        ...


COST_MODELS: Registry[CostModel] = Registry("cost model")
