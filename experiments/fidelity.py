"""How well does the simulator predict the real engine? Replay one trace on both and compare.

    python -m experiments.fidelity [overrides...]     (qwen2-small on a 2-core CPU: minutes)

1. Builds the real engine (`engine=mlx`), its steps timed by `timer` (see
   `experiments/calibrate.py`: on a shared CPU, `cpu` keeps other jobs out of the
   measurement), and calibrates the `fitted` cost model on it with
   the calibration grid (`experiments/calibrate.py`): synthetic workloads, not the trace, so
   the simulator is judged on data it was not fitted to. `fitted_path=FILE` skips this and
   uses a model calibrated before.
2. Warms the real engine up (`warmup`): `trace` replays the trace once unlogged, `grid` runs
   the calibration grid once, `none` skips it. MLX builds a graph the first time it sees a
   step shape; a server pays that at start-up, and the cost model prices warm steps.
3. Replays the trace on the real engine, virtual clock (time advances by each step's
   measured duration), into `real/`; `real_runs` > 1 repeats that (`real2/`, ...) to show
   how much the real engine differs from itself between runs. Then on the simulator with
   the fitted model into `sim/`: same scheduler, KV cache (as many blocks), trace and seed.
4. Compares mean, p50 and p99 of TTFT, TPOT and E2E and the throughputs, all recomputed from
   the two runs' Parquet logs: a table (printed and `fidelity.json`) and a figure
   (`figures/sim_vs_real`). Diagnostics: the step counts and busy seconds of both runs, and
   the cost model's error on the real replay's own steps.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

import testbed  # noqa: F401  (fast BLAS before mlx)
from experiments.calibrate import GridRunner, calibrate, engine_around, grid_workloads, use_timer
from experiments.replay import experiment_trace, run_experiment, trace_requests
from testbed.metrics import SLO, summarize
from testbed.replay.clock import VirtualClock
from testbed.replay.driver import replay
from testbed.replay.recorder import read_run
from testbed.sim.fitted import evaluate, load_fitted
from testbed.stack import build_stack

# (summary key, label) of every compared metric.
METRICS = tuple((f"{m}_{s}_s", f"{label} {name}") for m, label in
                (("ttft", "TTFT"), ("tpot", "TPOT"), ("e2e", "E2E"))
                for s, name in (("mean", "mean"), ("median", "p50"), ("p99", "p99"))) + (
    ("throughput_req_s", "throughput (req/s)"),
    ("throughput_output_tok_s", "throughput (output tok/s)"))
WARMUPS = ("trace", "grid", "none")


def compare_runs(real_dir: str | Path, sim_dir: str | Path, slo: SLO | None = None) -> dict:
    """Every metric of `METRICS` for both runs, recomputed from their Parquet logs, and the
    simulator's relative error (sim - real) / real."""
    real, sim = (_summary(d, slo) for d in (real_dir, sim_dir))
    rows = {}
    for key, label in METRICS:
        r, s = real.get(key), sim.get(key)
        error = (s - r) / r if r not in (None, 0) and s is not None else math.nan
        rows[key] = {"label": label, "real": r, "sim": s, "rel_error": error}
    return rows


def _summary(run_dir: str | Path, slo: SLO | None) -> dict:
    data = read_run(run_dir)
    return summarize(data.requests, data.steps, data.tokens, slo)


def simulated_config(cfg: Mapping, fitted_path: str | Path, dtype: str) -> dict:
    """The real run's config with the simulator as its engine: the fitted model, the real
    engine's dtype and KV budgets (so both pools hold as many blocks)."""
    sim = copy.deepcopy(dict(cfg))
    real = cfg["engine"]
    sim["engine"] = {"kind": "sim", "dtype": dtype, "cost_model": "fitted",
                     "fitted_path": str(fitted_path), "kv_memory_gb": real["kv_memory_gb"],
                     "host_kv_memory_gb": real.get("host_kv_memory_gb") or 0}
    return sim


def run_fidelity(cfg: Mapping, out_dir: str | Path) -> dict:
    """Steps 1-4 of the module docstring; returns the record written to `fidelity.json`."""
    out_dir = Path(out_dir)
    if cfg["engine"]["kind"] != "mlx":
        raise ValueError("fidelity compares the real engine with the simulator: engine=mlx")
    warmup = cfg.get("warmup", "trace")
    if warmup not in WARMUPS:
        raise ValueError(f"warmup={warmup!r}: choose one of {', '.join(WARMUPS)}")
    stack = build_stack(cfg)
    timer = use_timer(stack, cfg.get("timer", "auto"))
    if cfg.get("fitted_path"):
        fitted_path = Path(cfg["fitted_path"])
        calibration = None
    else:
        calibration = calibrate(stack, cfg, out_dir / "calibration")
        fitted_path = Path(calibration["fitted_path"])
    model = load_fitted(fitted_path, stack.model_config, stack.info["dtype"])

    if warmup == "trace":
        requests = trace_requests(experiment_trace(cfg), cfg, stack.model_config.vocab_size)
        replay(requests, engine_around(stack, cfg, VirtualClock()))
    elif warmup == "grid":
        GridRunner(stack, cfg, int(cfg.get("seed", 0))).run(grid_workloads(cfg["calibration"]["grid"]))
    real_runs = int(cfg.get("real_runs", 1))
    if real_runs < 1:
        raise ValueError(f"real_runs must be >= 1, got {real_runs}")
    for name in ["real", *(f"real{i}" for i in range(2, real_runs + 1))]:
        warm = dataclasses.replace(stack, engine=engine_around(stack, cfg, VirtualClock()))
        run_experiment(cfg, out_dir / name, stack=warm)
    run_experiment(simulated_config(cfg, fitted_path, stack.info["dtype"]), out_dir / "sim")

    slo = SLO.from_dict(cfg.get("slo") or {})
    metrics = compare_runs(out_dir / "real", out_dir / "sim", slo)
    for i in range(2, real_runs + 1):  # the real engine against itself: the noise floor
        again = compare_runs(out_dir / "real", out_dir / f"real{i}", slo)
        for key, row in metrics.items():
            row.setdefault("real_rerun_errors", []).append(again[key]["rel_error"])
    real, sim = read_run(out_dir / "real"), read_run(out_dir / "sim")
    targets = dict(cfg.get("targets") or {})
    record = {
        "model": stack.model_config.name, "dtype": stack.info["dtype"],
        "device": stack.info["device"], "fitted_path": str(fitted_path.resolve()),
        "warmup": warmup, "timer": timer, "metrics": metrics,
        "targets": {k: {"limit": v, "met": abs(metrics[k]["rel_error"]) <= v}
                    for k, v in targets.items()},
        "steps": {"real": len(real.steps), "sim": len(sim.steps)},
        "busy_seconds": {"real": float(real.steps["seconds"].sum()),
                         "sim": float(sim.steps["seconds"].sum())},
        "cost_model_error_on_real_steps": evaluate(model, real.steps),
        "calibration_held_out_error": calibration["held_out_error"] if calibration else None,
    }
    (out_dir / "fidelity.json").write_text(json.dumps(_plain(record), indent=2) + "\n")
    if cfg.get("report", True):
        write_figure(out_dir)
    return record


def write_figure(out_dir: Path) -> None:
    from analysis import style
    from analysis.figures import sim_vs_real
    from analysis.run import load_run

    logging.getLogger("fontTools").setLevel(logging.WARNING)
    style.save(sim_vs_real(load_run(out_dir / "real"), load_run(out_dir / "sim")),
               out_dir / "figures", "sim_vs_real")


def format_record(record: dict) -> str:
    limits = {k: t["limit"] for k, t in record["targets"].items()}
    reruns = len(next(iter(record["metrics"].values())).get("real_rerun_errors", []))
    rerun_header = "".join(f"{f'real{i}':>9s}" for i in range(2, reruns + 2))
    lines = [f"{'metric':28s}{'real':>11s}{'sim':>11s}{'error':>9s}{rerun_header}  target"]
    for key, row in record["metrics"].items():
        target = ""
        if key in limits:
            ok = abs(row["rel_error"]) <= limits[key]
            target = f"|err| <= {100 * limits[key]:.0f}%: {'met' if ok else 'MISSED'}"
        again = "".join(f"{_pct(e):>9s}" for e in row.get("real_rerun_errors", []))
        lines.append(f"{row['label']:28s}{_num(row['real']):>11s}{_num(row['sim']):>11s}"
                     f"{_pct(row['rel_error']):>9s}{again}  {target}")
    if reruns:
        lines.append("(real2...: the real engine's replay repeated, against the first: the "
                     "run-to-run spread of the measurement itself)")
    steps, busy = record["steps"], record["busy_seconds"]
    err = record["cost_model_error_on_real_steps"]
    lines += ["", f"steps: real {steps['real']}, sim {steps['sim']}; busy seconds: real "
                  f"{busy['real']:.2f}, sim {busy['sim']:.2f} ({_pct(busy['sim'] / busy['real'] - 1)})",
              f"cost model on the real replay's steps: MAPE {_pct(err['mape'])}, median APE "
              f"{_pct(err['median_ape'])}, R^2 {err['r2']:.3f} ({err['n']} steps)"]
    return "\n".join(lines)


def _num(value) -> str:
    return "-" if value is None else f"{value:.4g}"


def _pct(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:+.1f}%"


def _plain(value):
    """JSON-safe: NaN becomes None."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


@hydra.main(config_path="../conf", config_name="fidelity", version_base=None)
def _main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    record = run_fidelity(OmegaConf.to_container(cfg, resolve=True), out_dir)
    print(f"\nfidelity of the simulator ({record['model']} {record['dtype']} on "
          f"{record['device']}, steps timed by the {record['timer']} clock, fitted model "
          f"{record['fitted_path']}):\n")
    print(format_record(record))
    print(f"\nrun directory: {out_dir.resolve()}  (fidelity.json, real/, sim/, figures/)")


def main() -> None:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
    _main()


if __name__ == "__main__":
    sys.exit(main())
