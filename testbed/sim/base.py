"""The cost-model seam: a step's shape in, its predicted seconds out.

A cost model prices the model's forward pass over one step (its fixed overhead included).
Block copies of swap preemption are priced by the executor from the host link
(`testbed.sim.roofline.swap_seconds_per_block`), so a model fitted on steps without swaps
never prices them at zero. Implementations are picked by name from `COST_MODELS`.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from testbed.registry import Registry
from testbed.sim.features import FEATURE_NAMES, StepFeatures


class CostModel(Protocol):
    def predict(self, features: StepFeatures) -> float:
        """Seconds the model's forward pass over this step takes."""
        ...


def predict_many(cost_model: CostModel, features: StepFeatures) -> np.ndarray:
    """`cost_model.predict` of many steps: `features` holds arrays, one entry per step. Uses the
    model's own vectorized `predict_many` when it has one (equal to `predict` step by step)."""
    vectorized = getattr(cost_model, "predict_many", None)
    if vectorized is not None:
        return vectorized(features)
    columns = np.broadcast_arrays(*(np.asarray(getattr(features, n)) for n in FEATURE_NAMES))
    rows = zip(*(column.tolist() for column in columns))
    return np.array([cost_model.predict(StepFeatures(*row)) for row in rows], dtype=np.float64)


COST_MODELS: Registry[CostModel] = Registry("cost model")
