"""The simulated engine: step features, cost models (roofline, fitted), hardware profiles,
the simulated executor and the memory-fit check."""
from testbed.sim import fitted as _fitted, roofline as _roofline  # noqa: F401  (register cost models)
from testbed.sim.base import COST_MODELS, CostModel
from testbed.sim.executor import SimExecutor
from testbed.sim.features import FEATURE_NAMES, StepFeatures, step_features
from testbed.sim.fitted import FittedCostModel, evaluate, fit, load_fitted
from testbed.sim.hardware import HardwareProfile, load_profile, profile_names
from testbed.sim.memory import DoesNotFitError, MemoryFit, check_memory_fit
from testbed.sim.roofline import RooflineCostModel, swap_seconds_per_block

__all__ = [
    "COST_MODELS", "CostModel", "SimExecutor", "FEATURE_NAMES", "StepFeatures", "step_features",
    "FittedCostModel", "evaluate", "fit", "load_fitted", "HardwareProfile", "load_profile",
    "profile_names", "DoesNotFitError", "MemoryFit", "check_memory_fit", "RooflineCostModel",
    "swap_seconds_per_block",
]
