"""A linear cost model fitted to measured steps (the real engine's `steps.parquet`).

seconds = intercept + sum(coefficient x feature), with every term non-negative (non-negative
least squares), so the intercept is the per-step overhead and each coefficient a cost per unit
of work. The fit minimizes *relative* squared error: step times span orders of magnitude (one
decode vs an 8k-token prefill) and an absolute fit would serve the big steps only.

Two regimes by default, fitted separately: `decode` (steps without a prefill chunk) and
`mixed` (steps with one). On a GPU a small decode batch is bound by reading the weights, and a
step with a prefill chunk by compute, where the weight read hides; one linear model cannot
follow that kink, two can (`regimes=False` fits one, `all`). On steps priced by the H100
roofline for Qwen2.5-7B with 3 % noise, two regimes halve the held-out MAPE (6.1 % -> 3.3 %).

Rows that are no forward pass (`n_seqs == 0`) or include block copies (`n_swap_blocks > 0`:
the executor prices those from the host link) are left out of the fit and counted.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from testbed.model.config import ModelConfig
from testbed.sim.base import COST_MODELS
from testbed.sim.features import FEATURE_NAMES, StepFeatures

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_FEATURES: tuple[str, ...] = (
    "n_prefill_tokens", "prefill_attn_work", "n_prefill_seqs", "n_decode_seqs",
    "sum_decode_context")
_SHAPE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "vocab_size")


@dataclass(slots=True)
class Regime:
    """One linear model: seconds = intercept + sum(coefficient x feature)."""

    intercept: float
    coefficients: dict[str, float]

    def predict_frame(self, steps: pd.DataFrame) -> np.ndarray:
        out = np.full(len(steps), self.intercept)
        for name, c in self.coefficients.items():
            out += c * steps[name].to_numpy(dtype=float)
        return out


@dataclass(slots=True)
class FittedCostModel:
    """Per-regime linear models plus what they were fitted on (for the record and checks)."""

    regimes: dict[str, Regime]  # "decode" and "mixed", or "all"
    features: tuple[str, ...]
    target: str = "seconds"
    model: str = ""
    model_shape: dict[str, int] = field(default_factory=dict)
    dtype: str = ""
    device: str = ""
    n_train: int = 0
    n_left_out: int = 0
    train_error: dict[str, float] = field(default_factory=dict)
    _terms: dict[bool, tuple[float, tuple[tuple[str, float], ...]]] = field(
        init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        expected = [{"all"}, {"decode", "mixed"}]
        if set(self.regimes) not in expected:
            raise ValueError(f"fitted cost model: regimes must be 'all' or 'decode'+'mixed', "
                             f"got {sorted(self.regimes)}")
        unknown = sorted({n for r in self.regimes.values() for n in r.coefficients} - set(FEATURE_NAMES))
        if unknown:
            raise ValueError(f"fitted cost model: unknown feature(s) {', '.join(unknown)}")
        for has_prefill in (False, True):
            r = self._regime_of(has_prefill)
            self._terms[has_prefill] = (r.intercept, tuple((n, c) for n, c in r.coefficients.items() if c))

    def _regime_of(self, has_prefill: bool) -> Regime:
        if "all" in self.regimes:
            return self.regimes["all"]
        return self.regimes["mixed" if has_prefill else "decode"]

    def predict(self, features: StepFeatures) -> float:
        intercept, terms = self._terms[features.n_prefill_seqs > 0]
        return intercept + sum(c * getattr(features, name) for name, c in terms)

    def predict_frame(self, steps: pd.DataFrame) -> np.ndarray:
        """Predictions for every row of a step table (columns named as the features)."""
        _check_columns(steps, ("n_prefill_seqs", *self.features))
        if "all" in self.regimes:
            return self.regimes["all"].predict_frame(steps)
        mixed = steps["n_prefill_seqs"].to_numpy() > 0
        return np.where(mixed, self.regimes["mixed"].predict_frame(steps),
                        self.regimes["decode"].predict_frame(steps))

    def to_dict(self) -> dict:
        return {"cost_model": "fitted", "target": self.target, "features": list(self.features),
                "model": self.model, "model_shape": self.model_shape, "dtype": self.dtype,
                "device": self.device, "n_train": self.n_train, "n_left_out": self.n_left_out,
                "train_error": self.train_error,
                "regimes": {k: {"intercept": r.intercept, "coefficients": r.coefficients}
                            for k, r in self.regimes.items()}}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, d: dict, source: str = "fitted cost model") -> "FittedCostModel":
        try:
            regimes = {k: Regime(float(r["intercept"]), {n: float(c) for n, c in r["coefficients"].items()})
                       for k, r in d["regimes"].items()}
            return cls(regimes=regimes, features=tuple(d["features"]), target=d["target"],
                       model=d.get("model", ""), model_shape=d.get("model_shape") or {},
                       dtype=d.get("dtype", ""), device=d.get("device", ""),
                       n_train=int(d.get("n_train", 0)), n_left_out=int(d.get("n_left_out", 0)),
                       train_error=d.get("train_error") or {})
        except KeyError as e:
            raise ValueError(f"{source}: missing field {e.args[0]!r}") from None
        except (TypeError, AttributeError, ValueError) as e:
            raise ValueError(f"{source}: {e}") from None

    @classmethod
    def load(cls, path: str | Path) -> "FittedCostModel":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(d, str(path))


@COST_MODELS.register("fitted")
def load_fitted(path: str | Path, model: ModelConfig | None = None,
                dtype: str | None = None) -> FittedCostModel:
    """Load a fitted model; when `model` / `dtype` are given they must be what it was fitted on."""
    fitted = FittedCostModel.load(path)
    if model is not None and fitted.model_shape:
        shape = {k: getattr(model, k) for k in _SHAPE_FIELDS}
        if shape != fitted.model_shape:
            raise ValueError(f"{path}: fitted on {fitted.model or 'a model'} of shape "
                             f"{fitted.model_shape}, not {model.name} of shape {shape}")
    if dtype is not None and fitted.dtype and dtype != fitted.dtype:
        raise ValueError(f"{path}: fitted on dtype {fitted.dtype}, not {dtype}")
    return fitted


def fit(steps: pd.DataFrame, target: str = "seconds", *, features: tuple[str, ...] = DEFAULT_FEATURES,
        regimes: bool = True, model: ModelConfig | None = None, dtype: str = "",
        device: str = "") -> FittedCostModel:
    """Fit a `FittedCostModel` to a step table (feature columns and `target` in seconds)."""
    unknown = sorted(set(features) - set(FEATURE_NAMES))
    if unknown:
        raise ValueError(f"unknown feature(s) {', '.join(unknown)}; known: {', '.join(FEATURE_NAMES)}")
    _check_columns(steps, (target, *features))
    rows = _forward_rows(steps, target)
    if regimes:
        mixed = rows["n_prefill_seqs"].to_numpy() > 0
        parts = {"decode": rows[~mixed], "mixed": rows[mixed]}
    else:
        parts = {"all": rows}
    fitted = FittedCostModel(
        regimes={k: _fit_regime(k, part, target, features) for k, part in parts.items()},
        features=tuple(features), target=target, model=model.name if model else "",
        model_shape={k: getattr(model, k) for k in _SHAPE_FIELDS} if model else {},
        dtype=dtype, device=device, n_train=len(rows), n_left_out=len(steps) - len(rows))
    fitted.train_error = evaluate(fitted, rows, target)
    return fitted


def _fit_regime(name: str, rows: pd.DataFrame, target: str, features: tuple[str, ...]) -> Regime:
    from scipy.optimize import nnls

    if len(rows) <= len(features):
        raise ValueError(f"steps: {len(rows)} rows in the {name!r} regime, need more than "
                         f"{len(features)} to fit {len(features)} features and an intercept "
                         f"(or fit with regimes=False)")
    y = rows[target].to_numpy(dtype=float)
    x = np.column_stack([np.ones(len(rows))] + [rows[n].to_numpy(dtype=float) for n in features])
    a = x / y[:, None]  # relative error: (x.beta - y) / y
    scale = np.abs(a).max(axis=0)
    scale[scale == 0] = 1.0  # a feature that is always 0 here gets coefficient 0
    beta, _ = nnls(a / scale, np.ones(len(rows)))
    beta /= scale
    return Regime(float(beta[0]), {n: float(c) for n, c in zip(features, beta[1:])})


def evaluate(model: FittedCostModel, steps: pd.DataFrame, target: str = "seconds") -> dict[str, float]:
    """Errors of `model` on `steps` (held out from its fit): MAPE, median and p90 absolute
    percentage error (as fractions: 0.05 = 5 %), R^2, and the row count. Rows the fit would
    leave out (no forward pass, block copies) are left out here too."""
    _check_columns(steps, (target,))
    rows = _forward_rows(steps, target)
    if rows.empty:
        raise ValueError("steps: no forward-pass rows to evaluate")
    y = rows[target].to_numpy(dtype=float)
    pred = model.predict_frame(rows)
    ape = np.abs(pred - y) / y
    ss_res = float(np.sum((pred - y) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return {"mape": float(ape.mean()), "median_ape": float(np.median(ape)),
            "p90_ape": float(np.quantile(ape, 0.9)),
            "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan"), "n": len(y)}


def _forward_rows(steps: pd.DataFrame, target: str) -> pd.DataFrame:
    """The rows that are one forward pass without block copies; their target must be > 0."""
    _check_columns(steps, ("n_seqs", target))
    keep = steps["n_seqs"].to_numpy() > 0
    if "n_swap_blocks" in steps:
        keep &= steps["n_swap_blocks"].to_numpy() == 0
    rows = steps[keep]
    y = rows[target].to_numpy(dtype=float)
    bad = np.flatnonzero(~(y > 0))
    if len(bad):
        raise ValueError(f"steps: {target} must be > 0; row {rows.index[bad[0]]} has {y[bad[0]]}")
    return rows


def _check_columns(steps: pd.DataFrame, names) -> None:
    missing = [n for n in dict.fromkeys(names) if n not in steps.columns]
    if missing:
        raise ValueError(f"steps table has no column(s) {', '.join(missing)}")
