"""The fitted cost model: recovers a known linear ground truth, round-trips through JSON,
reports honest errors, and refuses bad input."""
import json

import numpy as np
import pandas as pd
import pytest

from testbed.model.config import named_config
from testbed.sim import COST_MODELS
from testbed.sim.features import FEATURE_NAMES, StepFeatures
from testbed.sim.fitted import DEFAULT_FEATURES, FittedCostModel, evaluate, fit, load_fitted
from testbed.sim.hardware import load_profile
from testbed.sim.roofline import RooflineCostModel

TRUTH = {"intercept": 2e-3, "n_prefill_tokens": 5e-5, "prefill_attn_work": 1e-9,
         "n_prefill_seqs": 1e-3, "n_decode_seqs": 1e-4, "sum_decode_context": 2e-7}


def random_steps(n: int, seed: int, noise: float = 0.02, prefill_share: float = 0.5) -> pd.DataFrame:
    """Steps with random shapes and seconds = TRUTH . features x (1 + noise)."""
    rng = np.random.default_rng(seed)
    has_prefill = rng.random(n) < prefill_share
    n_prefill = np.where(has_prefill, rng.integers(1, 4, n), 0)
    tokens = np.where(has_prefill, rng.integers(16, 4096, n), 0)
    offsets = rng.integers(0, 4096, n)
    n_decode = rng.integers(0, 128, n)
    n_decode[~has_prefill] = np.maximum(n_decode[~has_prefill], 1)
    steps = pd.DataFrame({
        "n_seqs": n_prefill + n_decode, "n_prefill_seqs": n_prefill, "n_prefill_tokens": tokens,
        "prefill_attn_work": np.where(has_prefill, tokens * offsets + tokens * (tokens + 1) // 2, 0),
        "n_decode_seqs": n_decode, "sum_decode_context": n_decode * rng.integers(16, 8192, n),
        "n_swap_blocks": 0})
    seconds = TRUTH["intercept"] + sum(c * steps[k] for k, c in TRUTH.items() if k != "intercept")
    steps["seconds"] = seconds * (1 + rng.normal(0, noise, n))
    return steps


def test_recovers_the_ground_truth_in_one_regime():
    model = fit(random_steps(3000, seed=1), regimes=False)
    r = model.regimes["all"]
    assert r.intercept == pytest.approx(TRUTH["intercept"], rel=0.05)
    for name in DEFAULT_FEATURES:
        assert r.coefficients[name] == pytest.approx(TRUTH[name], rel=0.05), name


def test_recovers_the_ground_truth_per_regime():
    model = fit(random_steps(3000, seed=2))
    decode, mixed = model.regimes["decode"], model.regimes["mixed"]
    assert decode.intercept == pytest.approx(TRUTH["intercept"], rel=0.05)
    for name in ("n_decode_seqs", "sum_decode_context"):
        assert decode.coefficients[name] == pytest.approx(TRUTH[name], rel=0.05), name
    # Decode-only steps have no prefill: those columns are all zero and get no weight.
    assert decode.coefficients["n_prefill_tokens"] == 0
    assert mixed.intercept + mixed.coefficients["n_prefill_seqs"] == pytest.approx(
        TRUTH["intercept"] + TRUTH["n_prefill_seqs"], rel=0.1)
    for name in ("n_prefill_tokens", "prefill_attn_work", "n_decode_seqs", "sum_decode_context"):
        assert mixed.coefficients[name] == pytest.approx(TRUTH[name], rel=0.1), name


def test_evaluate_reports_errors_on_held_out_steps():
    model = fit(random_steps(2000, seed=3))
    err = evaluate(model, random_steps(1000, seed=4))
    assert err["n"] == 1000
    assert 0.005 < err["mape"] < 0.03  # the noise is 2 % (mean |error| ~ 1.6 %)
    assert err["median_ape"] < err["p90_ape"] < 0.05
    assert err["r2"] > 0.99
    assert model.train_error["mape"] < 0.03 and model.n_train == 2000

    broken = FittedCostModel.from_dict({**model.to_dict(), "regimes": {
        "all": {"intercept": TRUTH["intercept"], "coefficients": {}}}})
    assert evaluate(broken, random_steps(500, seed=5))["mape"] > 0.5


def test_evaluate_by_hand():
    steps = pd.DataFrame({"n_seqs": [1, 1], "n_prefill_seqs": [0, 0], "n_decode_seqs": [1, 3],
                          "seconds": [1.0, 4.0]})
    model = FittedCostModel({"all": _regime(0.0, n_decode_seqs=1.0)}, ("n_decode_seqs",))
    err = evaluate(model, steps)  # predictions 1 and 3: errors 0 and 25 %
    assert err["mape"] == pytest.approx(0.125)
    assert err["r2"] == pytest.approx(1 - 1 / 4.5)


def _regime(intercept, **coefficients):
    from testbed.sim.fitted import Regime
    return Regime(intercept, coefficients)


def test_save_load_round_trip(tmp_path):
    model = fit(random_steps(500, seed=6), model=named_config("qwen2-0.5b"), dtype="float32",
                device="cpu")
    path = tmp_path / "fitted.json"
    model.save(path)
    d = json.loads(path.read_text())
    assert d["model"] == "qwen2-0.5b" and d["dtype"] == "float32" and d["device"] == "cpu"
    assert set(d["regimes"]) == {"decode", "mixed"} and d["train_error"]["mape"] > 0
    loaded = FittedCostModel.load(path)
    assert loaded.to_dict() == model.to_dict()
    f = StepFeatures(n_seqs=3, n_prefill_seqs=1, n_prefill_tokens=300, prefill_attn_work=45150,
                     n_decode_seqs=2, sum_decode_context=900)
    assert loaded.predict(f) == model.predict(f)
    steps = random_steps(50, seed=7)
    np.testing.assert_array_equal(loaded.predict_frame(steps), model.predict_frame(steps))


def test_predict_matches_predict_frame():
    model = fit(random_steps(500, seed=8))
    steps = random_steps(40, seed=9)
    per_row = [model.predict(StepFeatures(**{k: int(row[k]) for k in steps.columns
                                              if k in FEATURE_NAMES}))
               for _, row in steps.iterrows()]
    np.testing.assert_allclose(per_row, model.predict_frame(steps), rtol=1e-12)


def test_registry_loads_and_checks_what_it_was_fitted_on(tmp_path):
    path = tmp_path / "fitted.json"
    fit(random_steps(300, seed=10), model=named_config("qwen2-0.5b"), dtype="float32").save(path)
    assert isinstance(COST_MODELS.create("fitted", path=path), FittedCostModel)
    load_fitted(path, model=named_config("qwen2.5-0.5b"), dtype="float32")  # same shape
    with pytest.raises(ValueError, match="qwen2-0.5b.*not qwen2.5-7b"):
        load_fitted(path, model=named_config("qwen2.5-7b"))
    with pytest.raises(ValueError, match="float32, not bfloat16"):
        load_fitted(path, dtype="bfloat16")


def test_steps_with_swaps_or_no_forward_pass_are_left_out():
    steps = random_steps(300, seed=11)
    extra = steps.iloc[:5].copy()
    extra["n_swap_blocks"] = 4
    extra["seconds"] = 100.0  # would wreck the fit if used
    idle = steps.iloc[:3].copy()
    idle[["n_seqs", "n_prefill_seqs", "n_decode_seqs", "seconds"]] = 0
    model = fit(pd.concat([steps, extra, idle], ignore_index=True))
    assert model.n_train == 300 and model.n_left_out == 8
    assert model.train_error["mape"] < 0.03


def test_bad_input_is_named():
    steps = random_steps(100, seed=12)
    with pytest.raises(ValueError, match="no column.*sum_decode_context"):
        fit(steps.drop(columns="sum_decode_context"))
    with pytest.raises(ValueError, match="unknown feature.*n_tokens"):
        fit(steps, features=("n_tokens",))
    bad = steps.copy()
    bad.loc[7, "seconds"] = -1.0
    with pytest.raises(ValueError, match="row 7"):
        fit(bad)
    with pytest.raises(ValueError, match="'decode' regime"):
        fit(random_steps(100, seed=13, prefill_share=0.97))


def test_load_errors_name_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{")
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        FittedCostModel.load(path)
    path.write_text(json.dumps({"features": [], "target": "seconds"}))
    with pytest.raises(ValueError, match="broken.json: missing field 'regimes'"):
        FittedCostModel.load(path)
    path.write_text(json.dumps({"features": [], "target": "seconds", "regimes": {
        "all": {"intercept": 0, "coefficients": {"n_bogus": 1}}}}))
    with pytest.raises(ValueError, match="unknown feature.*n_bogus"):
        FittedCostModel.load(path)


def test_two_regimes_follow_a_roofline_better_than_one():
    # Steps priced by a roofline: decode-only steps are bound by weight reads, steps with a
    # prefill chunk by compute; one line cannot follow that kink, two can.
    rng = np.random.default_rng(14)
    rf = RooflineCostModel(named_config("qwen2.5-7b"), load_profile("h100"))

    def roofline_steps(n):
        rows = []
        for _ in range(n):
            nd, has_prefill = int(rng.integers(1, 128)), rng.random() < 0.5
            c, o = (int(rng.integers(16, 2048)), int(rng.integers(0, 2048))) if has_prefill else (0, 0)
            f = StepFeatures(n_seqs=nd + has_prefill, n_prefill_seqs=int(has_prefill),
                             n_prefill_tokens=c, prefill_attn_work=c * o + c * (c + 1) // 2,
                             sum_prefill_context=c + o, n_decode_seqs=nd,
                             sum_decode_context=int(rng.integers(16, 4096, nd).sum()),
                             n_samples=nd + has_prefill, n_batched_tokens=c + nd)
            rows.append({**f.as_dict(), "seconds": rf.predict(f) * rng.lognormal(0, 0.02)})
        return pd.DataFrame(rows)

    train, test = roofline_steps(1500), roofline_steps(500)
    one = evaluate(fit(train, regimes=False), test)["mape"]
    two = evaluate(fit(train), test)["mape"]
    assert two < 0.75 * one
