"""Calibration of the fitted cost model on the real engine (tiny model, tiny grid): the
grid's shapes, the split, a loadable model with finite held-out errors, and refusals."""
import json
import math
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from experiments.calibrate import calibrate, grid_workloads, rescaled, split_steps, use_timer
from replay_runs import REPO, config, replay_env
from testbed import blas
from testbed.model.config import named_config
from testbed.plan import StepPlan, StepResult
from testbed.replay.recorder import read_run
from testbed.sim import load_fitted
from testbed.sim.fitted import evaluate, fit
from testbed.stack import build_stack

TINY = ("model=qwen2-tiny", "calibration=tiny", "engine.kv_memory_gb=0.01",
        "engine.host_kv_memory_gb=0", "report=false")


def calibrate_config(*overrides: str) -> dict:
    return config(*overrides, name="calibrate")


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    out = tmp_path_factory.mktemp("calibration")
    cfg = calibrate_config(*TINY)
    return calibrate(build_stack(cfg), cfg, out), out, cfg


def test_grid_has_every_kind_of_point():
    grid = calibrate_config(*TINY)["calibration"]["grid"]
    workloads = grid_workloads(grid)
    names = [w.name for w in workloads]
    assert len(names) == len(set(names)) == (
        len(grid["decode_batches"]) * len(grid["contexts"]) + len(grid["prefill_chunks"])
        + len(grid["fresh_batches"]) * len(grid["contexts"])
        + len(grid["mixed_decodes"]) * len(grid["mixed_prompt_lens"]))
    decode = next(w for w in workloads if w.name == "decode b=4 ctx=48")
    assert [len(stage) for stage in decode.stages] == [1, 3]
    assert {s.prompt for stage in decode.stages for s in stage} == {decode.stages[0][0].prompt}
    chunked = next(w for w in workloads if w.name == "prefill chunk=16")
    assert chunked.max_num_batched_tokens == 16


def test_the_measured_steps_cover_the_grid_once_after_warm_up(calibrated):
    record, out, cfg = calibrated
    steps = read_run(out / "profile").steps
    grid = cfg["calibration"]["grid"]
    assert set(steps["workload"]) == {w.name for w in grid_workloads(grid)}
    assert len(steps) == record["steps"] == record["train_steps"] + record["held_out_steps"]
    chunks = steps[steps["workload"] == "prefill chunk=16"]
    assert list(chunks["n_prefill_tokens"]) == [16] * (grid["prefill_len"] // 16)  # one pass only
    mixed = steps[steps["workload"].str.startswith("mixed")]
    assert ((mixed["n_prefill_seqs"] > 0) & (mixed["n_decode_seqs"] > 0)).any()
    decodes = steps[steps["workload"] == "decode b=4 ctx=48"]
    assert (decodes["n_decode_seqs"] == 4).sum() >= grid["decode_steps"] - 1


def test_calibration_writes_a_loadable_model_with_finite_held_out_error(calibrated):
    record, out, _ = calibrated
    model = load_fitted(record["fitted_path"], named_config("qwen2-tiny"), "float32")
    held_out = record["held_out_error"]
    assert all(math.isfinite(held_out[k]) for k in ("mape", "median_ape", "p90_ape"))
    assert held_out["n"] == record["held_out_steps"] > 0
    saved = json.loads((out / "calibration.json").read_text())
    assert saved["held_out_error"] == held_out
    # The reported error is the model's error on the steps it did not see.
    steps = read_run(out / "profile").steps
    _, test = split_steps(steps, 0.25, 0)
    assert evaluate(model, test) == pytest.approx(held_out)
    assert model.predict_frame(steps).min() > 0


def test_load_fitted_refuses_another_model_or_dtype(calibrated):
    path = calibrated[0]["fitted_path"]
    with pytest.raises(ValueError, match="qwen2-small"):
        load_fitted(path, named_config("qwen2-small"))
    with pytest.raises(ValueError, match="bfloat16"):
        load_fitted(path, named_config("qwen2-tiny"), "bfloat16")


def test_the_fitted_model_drives_the_simulator(calibrated):
    from replay_runs import SIM_TINY, config
    from experiments.replay import run_experiment

    path = calibrated[0]["fitted_path"]
    cfg = config(*SIM_TINY, "engine.cost_model=fitted", f"engine.fitted_path={path}",
                 "engine.dtype=float32", "trace.transforms.head=10")
    summary = run_experiment(cfg, calibrated[1] / "sim")
    assert summary["n_finished"] == 10 and summary["step_mean_s"] > 0


def test_split_is_random_disjoint_and_reproducible():
    steps = pd.DataFrame({"x": np.arange(1000)})
    train, test = split_steps(steps, 0.25, seed=3)
    assert len(train) + len(test) == 1000 and not set(train["x"]) & set(test["x"])
    assert 200 < len(test) < 300
    assert split_steps(steps, 0.25, seed=3)[1].equals(test)
    with pytest.raises(ValueError, match="held_out"):
        split_steps(steps, 1.0)


def test_the_command_prints_the_fitted_path(tmp_path):
    out = subprocess.run([sys.executable, "-m", "experiments.calibrate", *TINY,
                          f"fitted_path={tmp_path / 'copy.json'}", f"hydra.run.dir={tmp_path}"],
                         cwd=REPO, env=replay_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"fitted_path: {tmp_path / 'copy.json'}" in out.stdout
    assert "held out" in out.stdout and "MAPE" in out.stdout
    assert json.loads((tmp_path / "copy.json").read_text()) == json.loads(
        (tmp_path / "fitted.json").read_text())


class Sleeper:
    """An executor whose steps wait without computing (as a step descheduled by other jobs)."""

    def execute(self, plan):
        time.sleep(0.2)
        return StepResult({}, seconds=0.2)


@pytest.fixture
def blas_threads():
    before = blas.threads()
    yield
    if before is not None:
        blas.set_threads(before)


def test_the_cpu_timer_does_not_count_waiting(blas_threads):
    stack = build_stack(calibrate_config(*TINY))
    assert use_timer(stack, "auto") == "cpu" and stack.info["timer"] == "cpu"
    assert blas.threads() in (1, None)  # one BLAS thread (None: no OpenBLAS loaded)
    stack.engine.executor.inner = Sleeper()
    assert stack.engine.executor.execute(StepPlan()).seconds < 0.05


def test_timer_errors_are_named(blas_threads):
    stack = build_stack(calibrate_config(*TINY))
    with pytest.raises(ValueError, match="timer='gpu'"):
        use_timer(stack, "gpu")
    stack.info["device"] = "Device(gpu, 0)"
    assert use_timer(stack, "auto") == "wall"
    with pytest.raises(ValueError, match="timer=wall"):
        use_timer(stack, "cpu")
    overlapped = build_stack(calibrate_config(*TINY, "engine.overlap=true"))
    with pytest.raises(ValueError, match="overlap"):
        use_timer(overlapped, "cpu")


def test_calibration_on_another_window_of_the_trace(tmp_path):
    # One regime: how many steps mix a prefill in depends on the measured step times.
    cfg = calibrate_config(*TINY, "calibration.source=trace", "calibration.regimes=false")
    record = calibrate(build_stack(cfg), cfg, tmp_path)
    assert record["source"] == "trace" and math.isfinite(record["held_out_error"]["mape"])
    profiled = read_run(tmp_path / "profile").requests
    assert len(profiled) == 8 and (profiled["status"] == "finished").all()
    # Not the requests the experiment itself replays (the first 100 of the trace).
    from experiments.replay import experiment_trace
    replayed = set(experiment_trace(cfg).df["request_id"])
    assert replayed and not replayed & set(profiled["request_id"])
    with pytest.raises(ValueError, match="calibration.source"):
        calibrate(build_stack(cfg), {**cfg, "calibration": {**cfg["calibration"], "source": "x"}},
                  tmp_path / "bad")


def test_rescaled_regimes_add_up_to_the_measured_seconds():
    rng = np.random.default_rng(0)
    n = 400
    mixed = rng.random(n) < 0.4
    steps = pd.DataFrame({
        "n_seqs": 1 + rng.integers(0, 8, n), "n_prefill_seqs": mixed.astype(int),
        "n_prefill_tokens": np.where(mixed, rng.integers(16, 512, n), 0),
        "prefill_attn_work": np.where(mixed, rng.integers(100, 10_000, n), 0),
        "n_decode_seqs": rng.integers(1, 8, n), "sum_decode_context": rng.integers(10, 5000, n),
        "n_swap_blocks": 0})
    truth = 0.01 + 1e-4 * steps["n_prefill_tokens"] + 2e-3 * steps["n_decode_seqs"]
    steps["seconds"] = truth * rng.lognormal(0.0, 0.4, n)  # noise that only a mean follows
    model = fit(steps)
    scaled = rescaled(model, steps)
    for regime, mask in (("decode", ~mixed), ("mixed", mixed)):
        rows = steps[mask]
        assert scaled.predict_frame(rows).sum() == pytest.approx(rows["seconds"].sum())
        assert model.predict_frame(rows).sum() < 0.95 * rows["seconds"].sum()  # the fit sat low
        scale = rows["seconds"].sum() / model.predict_frame(rows).sum()
        before, after = model.regimes[regime], scaled.regimes[regime]
        assert after.intercept == pytest.approx(before.intercept * scale)
        for name, c in after.coefficients.items():
            assert c == pytest.approx(before.coefficients[name] * scale)


def test_the_simulator_refuses_a_model_fitted_to_another_shape_or_dtype(calibrated):
    from replay_runs import SIM_TINY, config

    path = calibrated[0]["fitted_path"]
    for overrides, message in ((("model=qwen2-small",), "qwen2-small"), ((), "bfloat16")):
        cfg = config(*SIM_TINY, "engine=sim_fitted", f"engine.fitted_path={path}",
                     "engine.dtype=bfloat16" if not overrides else "engine.dtype=float32",
                     *overrides)
        with pytest.raises(ValueError, match=message):
            build_stack(cfg)
