"""Calibrate the `fitted` cost model on the real engine of this device.

    python -m experiments.calibrate [overrides...]      (qwen2-small on a 2-core CPU: minutes)

Runs a grid of small synthetic workloads straight through the real engine (`Engine` around
`MLXExecutor`, virtual clock): decode batches at several context lengths, one prompt
prefilled in chunks of several sizes, fresh prompts prefilled alone and together, and fresh
prompts arriving into running decodes. Or (`calibration.source=trace`) it replays a window of the
experiment's trace that `calibration.trace_transforms` picks. The workload runs once to
warm up first (MLX builds a graph for each new shape: a server pays that once, at start-up,
not per step), then again while every step is logged. A random part of the logged steps
fits the cost model; the rest measures it. `timer` says how a step is timed: `wall` as the
engine measures it, or `cpu`, the process's CPU time with one BLAS thread, which other jobs
on a shared machine cannot inflate (`auto`: cpu on MLX's CPU device, wall on a GPU).
Writes into the run directory:

    profile/            the measured steps and requests, a run directory of their own
    fitted.json         the cost model, for `engine=sim engine.cost_model=fitted
                        engine.fitted_path=...` (also copied to `fitted_path` when set)
    calibration.json    grid, split and the errors on training and held-out steps
    figures/            step time vs shape; predicted vs measured on held-out steps
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import count
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

import testbed  # noqa: F401  (fast BLAS before mlx)
from experiments.replay import experiment_trace, trace_info, trace_requests
from testbed import blas
from testbed.engine.engine import Engine
from testbed.kv import make_kv_manager
from testbed.plan import StepPlan, StepResult
from testbed.replay.clock import Clock, VirtualClock
from testbed.replay.driver import replay, step_row
from testbed.replay.recorder import Recorder, read_run, request_row
from testbed.request import Request, SamplingParams
from testbed.sched import make_scheduler
from testbed.sim.fitted import DEFAULT_FEATURES, FittedCostModel, Regime, evaluate, fit
from testbed.stack import Stack, build_stack

ERRORS = (("mape", "MAPE"), ("median_ape", "median APE"), ("p90_ape", "p90 APE"), ("r2", "R^2"),
          ("n", "steps"))
TIMERS = ("auto", "wall", "cpu")
SOURCES = ("grid", "trace")


class CPUTimedExecutor:
    """Times each step by the CPU time the process spends on it instead of the wall clock.

    On a machine shared with other jobs, a step's wall time also counts the time it waited
    for a core, which comes and goes with the neighbours' load (a factor of 5 within one run
    on a busy 2-core machine). With one BLAS thread and one step at a time, the CPU time of
    a step is what it takes on an idle core. Only for MLX's CPU device: time spent on a GPU
    is no CPU time. The inner executor's host/device split stays in wall seconds."""

    def __init__(self, inner):
        self.inner = inner

    def execute(self, plan: StepPlan) -> StepResult:
        t0 = time.process_time()
        result = self.inner.execute(plan)
        result.seconds = time.process_time() - t0
        return result


def use_timer(stack: Stack, timer: str) -> str:
    """Time the real engine of `stack` by `timer`: `wall` (as the executor measures), `cpu`
    (`CPUTimedExecutor`, one BLAS thread), or `auto` (cpu on MLX's CPU device, else wall).
    Returns the timer used, also recorded in `stack.info`."""
    if timer not in TIMERS:
        raise ValueError(f"timer={timer!r}: choose one of {', '.join(TIMERS)}")
    on_cpu = "cpu" in stack.info["device"].lower()
    if timer == "auto":
        timer = "cpu" if on_cpu else "wall"
    if timer == "cpu":
        if not on_cpu:
            raise ValueError(f"timer=cpu measures CPU time, but the engine runs on "
                             f"{stack.info['device']}: use timer=wall")
        if stack.engine.overlap:
            raise ValueError("timer=cpu times one step at a time: set engine.overlap=false")
        blas.set_threads(1)
        stack.engine.executor = CPUTimedExecutor(stack.engine.executor)
        stack.info["blas_threads"] = 1
    stack.info["timer"] = timer
    return timer


@dataclass(frozen=True, slots=True)
class Spec:
    """One synthetic request. Requests with the same `prompt` id share one token stream (a
    shorter prompt is a prefix of a longer one), so after the longest was computed the
    others hit the prefix cache."""

    prompt: int
    prompt_len: int
    output_len: int


@dataclass(frozen=True, slots=True)
class Workload:
    """One grid point: stages of requests, each stage added once a step had no prefill left
    (the engine decodes only, or is idle), under a step token budget (None: the scheduler's)."""

    name: str
    stages: tuple[tuple[Spec, ...], ...]
    max_num_batched_tokens: int | None = None


def grid_workloads(grid: Mapping) -> list[Workload]:
    """The workloads of a calibration grid (see `conf/calibration/default.yaml`)."""
    prompt_ids = count()
    steps = int(grid["decode_steps"])
    out = []
    for batch in grid["decode_batches"]:
        for context in grid["contexts"]:
            # Prompts of one token stream, from a quarter to 7/4 of `context` long (real
            # batches mix contexts, and a decode batch is padded to its longest): the longest
            # is computed first, the others then hit the cache for it (their short remainders
            # take one step), and all decode together for `steps` steps; then they finish one
            # after another, so the batch shrinks through every size below `batch`.
            p = next(prompt_ids)
            lengths = [max(1, int(context * (0.25 + 1.5 * i / (batch - 1)))) if batch > 1
                       else context for i in range(batch)]
            outputs = [steps + i * steps // batch for i in range(batch)]
            out.append(Workload(f"decode b={batch} ctx={context}", (
                (Spec(p, lengths[-1], outputs[-1]),),
                tuple(Spec(p, n, m) for n, m in zip(lengths[:-1], outputs[:-1])))))
    for chunk in grid["prefill_chunks"]:
        out.append(Workload(f"prefill chunk={chunk}",
                            ((Spec(next(prompt_ids), int(grid["prefill_len"]), 1),),), int(chunk)))
    for batch in grid["fresh_batches"]:
        for context in grid["contexts"]:
            out.append(Workload(f"fresh b={batch} len={context}", (
                tuple(Spec(next(prompt_ids), context, 1) for _ in range(batch)),)))
    for decodes in grid["mixed_decodes"]:
        for prompt_len in grid["mixed_prompt_lens"]:
            # Fresh prompts arriving one after another into running decodes.
            p, arrivals = next(prompt_ids), int(grid["mixed_prompt_count"])
            runs = steps + 2 * arrivals
            decoding = ((Spec(p, int(grid["mixed_context"]), runs),),
                        tuple(Spec(p, int(grid["mixed_context"]), runs) for _ in range(decodes - 1)))
            arriving = tuple((Spec(next(prompt_ids), prompt_len, 1),) for _ in range(arrivals))
            out.append(Workload(f"mixed d={decodes} prompt={prompt_len}", decoding + arriving))
    return out


def engine_around(stack: Stack, cfg: Mapping, clock: Clock, **scheduler: int) -> Engine:
    """A fresh scheduler and KV manager, as `cfg` configures them (with `scheduler`
    overrides), around the executor `stack` built: a new engine that keeps the executor's
    warm state (its model, KV pool and compiled graphs)."""
    info, cache = stack.info, dict(cfg["cache"])
    kv = make_kv_manager(cache["name"], info["kv_blocks"], info["block_size"],
                         info["kv_host_blocks"], cache.get("eviction", "lru"))
    sched_cfg = {k: v for k, v in dict(cfg["scheduler"]).items() if k != "name"} | scheduler
    sched_cfg["max_model_len"] = min(int(sched_cfg.get("max_model_len", 1 << 30)),
                                     stack.model_config.max_position_embeddings)
    return Engine(make_scheduler(cfg["scheduler"]["name"], sched_cfg, kv), stack.engine.executor,
                  clock, overlap=stack.engine.overlap)


class GridRunner:
    """Runs workloads through fresh engines around one executor, on one virtual clock, and
    logs their steps (tagged with the workload's name) and requests."""

    def __init__(self, stack: Stack, cfg: Mapping, seed: int = 0):
        self.stack, self.cfg = stack, cfg
        self.clock = VirtualClock()
        self.vocab = stack.model_config.vocab_size
        self.seed = seed
        self.steps = count()
        self.requests = count()

    def run(self, workloads: list[Workload], recorder: Recorder | None = None) -> None:
        for workload in workloads:
            self.run_one(workload, recorder)

    def run_one(self, workload: Workload, recorder: Recorder | None = None) -> None:
        budget = {} if workload.max_num_batched_tokens is None else {
            "max_num_batched_tokens": workload.max_num_batched_tokens}
        engine = engine_around(self.stack, self.cfg, self.clock, **budget)
        stages = deque(workload.stages)
        while stages or engine.has_unfinished:
            if not engine.has_unfinished:
                self._add(engine, stages.popleft())
                continue
            out = engine.step()
            if out.plan.is_empty and not out.finished:
                raise RuntimeError(f"calibration workload {workload.name!r} stalled: the "
                                   f"scheduler planned nothing (KV pool too small?)")
            if recorder is not None:
                recorder.step({**step_row(out), "step": next(self.steps), "workload": workload.name})
                for seq in out.finished:
                    recorder.request(request_row(seq))
            if stages and out.features.n_prefill_seqs == 0:
                self._add(engine, stages.popleft())

    def _add(self, engine: Engine, stage: tuple[Spec, ...]) -> None:
        for spec in stage:
            engine.add_request(Request(
                f"calibration-{next(self.requests)}", self.clock.now, spec.prompt_len,
                spec.output_len, prompt_token_ids=self._tokens(spec.prompt, spec.prompt_len),
                sampling=SamplingParams(ignore_eos=True)))

    def _tokens(self, prompt: int, n: int) -> list[int]:
        """The first `n` tokens of prompt `prompt`'s stream (blocks of 64 random ids, each
        seeded by its position, so a shorter prompt is a prefix of a longer one)."""
        blocks = [np.random.default_rng([self.seed, prompt, b]).integers(0, self.vocab, 64)
                  for b in range(-(-n // 64))]
        return np.concatenate(blocks)[:n].tolist()


def profile(stack: Stack, cfg: Mapping, run_dir: Path) -> pd.DataFrame:
    """Warm up (`warmup_passes`), then run the calibration workload `repeats` times logging
    every step into `run_dir` (a run directory); returns the measured steps. The workload
    is the grid (`source: grid`) or a replay of the window of the experiment's trace that
    `trace_transforms` picks (`source: trace`)."""
    cal = cfg["calibration"]
    source = cal.get("source", "grid")
    if source == "grid":
        workloads = grid_workloads(cal["grid"])
        runner = GridRunner(stack, cfg, int(cfg.get("seed", 0)))
        what = {"workloads": [w.name for w in workloads]}

        def run(recorder: Recorder | None = None) -> None:
            runner.run(workloads, recorder)
    elif source == "trace":
        trace_cfg = calibration_trace_config(cfg)
        trace = experiment_trace(trace_cfg)
        requests = trace_requests(trace, trace_cfg, stack.model_config.vocab_size)
        what = {"trace": trace_info(trace)}

        def run(recorder: Recorder | None = None) -> None:
            replay(requests, engine_around(stack, cfg, VirtualClock()), recorder)
    else:
        raise ValueError(f"calibration.source={source!r}: choose one of {', '.join(SOURCES)}")
    for _ in range(int(cal["warmup_passes"])):
        run()
    with Recorder(run_dir) as recorder:
        recorder.start({"experiment": "calibration profile", "config": cfg, **what, **stack.info})
        for _ in range(int(cal["repeats"])):
            run(recorder)
    return read_run(run_dir).steps


def calibration_trace_config(cfg: Mapping) -> dict:
    """The experiment's config with `calibration.trace_transforms` over its trace's
    transforms: the trace window calibration replays (`source: trace`)."""
    if "trace" not in cfg:
        raise ValueError("calibration.source=trace needs a trace config (the `trace` group)")
    trace = dict(cfg["trace"])
    trace["transforms"] = {**dict(trace.get("transforms") or {}),
                           **dict(cfg["calibration"].get("trace_transforms") or {})}
    return {**cfg, "trace": trace}


def split_steps(steps: pd.DataFrame, held_out: float, seed: int = 0
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A random `held_out` fraction of the steps for testing, the rest for fitting."""
    if not 0 < held_out < 1:
        raise ValueError(f"calibration.held_out must be in (0, 1), got {held_out}")
    test = np.random.default_rng(seed).random(len(steps)) < held_out
    return steps[~test], steps[test]


def rescaled(model: FittedCostModel, steps: pd.DataFrame) -> FittedCostModel:
    """`model` with each regime scaled so that its predictions for `steps` add up to their
    measured seconds. The fit minimizes relative error, which puts noisy step times' model
    below their mean (a step slowed by 50 % counts less than one sped up by 33 %); but the
    simulated clock, and every queue behind it, runs on the sum of step times."""
    rows = steps[(steps["n_seqs"] > 0) & (steps.get("n_swap_blocks", 0) == 0)]
    predicted, measured = model.predict_frame(rows), rows[model.target].to_numpy(dtype=float)
    mixed = rows["n_prefill_seqs"].to_numpy() > 0
    masks = {"all": np.ones(len(rows), bool), "decode": ~mixed, "mixed": mixed}
    regimes = {}
    for name, regime in model.regimes.items():
        mask = masks[name]
        scale = measured[mask].sum() / predicted[mask].sum() if predicted[mask].sum() > 0 else 1.0
        regimes[name] = Regime(regime.intercept * scale,
                               {k: c * scale for k, c in regime.coefficients.items()})
    out = FittedCostModel.from_dict({**model.to_dict(), "regimes": {
        k: {"intercept": r.intercept, "coefficients": r.coefficients} for k, r in regimes.items()}})
    out.train_error = evaluate(out, steps, model.target)
    return out


def calibrate(stack: Stack, cfg: Mapping, out_dir: str | Path) -> dict:
    """Profile the real engine of `stack` on the grid, fit, evaluate, save; returns the
    calibration record (also written to `out_dir/calibration.json`)."""
    out_dir = Path(out_dir)
    cal = cfg["calibration"]
    steps = profile(stack, cfg, out_dir / "profile")
    train, test = split_steps(steps, float(cal["held_out"]), int(cfg.get("seed", 0)))
    features = tuple(cal.get("features") or DEFAULT_FEATURES)
    model = fit(train, features=features, regimes=bool(cal.get("regimes", True)),
                model=stack.model_config, dtype=stack.info["dtype"], device=stack.info["device"])
    if cal.get("rescale", True):
        model = rescaled(model, train)
    fitted_path = out_dir / "fitted.json"
    model.save(fitted_path)
    if cfg.get("fitted_path"):
        Path(cfg["fitted_path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fitted_path, cfg["fitted_path"])
    record = {"fitted_path": str(fitted_path.resolve()), "model": stack.model_config.name,
              "dtype": stack.info["dtype"], "device": stack.info["device"],
              "blas": stack.info.get("blas"), "timer": stack.info.get("timer", "wall"),
              "source": cal.get("source", "grid"), "grid": dict(cal["grid"]),
              "steps": len(steps), "train_steps": len(train), "held_out_steps": len(test),
              "train_error": model.train_error, "held_out_error": evaluate(model, test),
              "regimes": model.to_dict()["regimes"]}
    (out_dir / "calibration.json").write_text(json.dumps(record, indent=2) + "\n")
    if cfg.get("report", True):
        write_figures(out_dir, model, test)
    return record


def write_figures(out_dir: Path, model: FittedCostModel, test: pd.DataFrame) -> None:
    from analysis import style
    from analysis.figures import step_time_vs_shape
    from analysis.run import load_run

    logging.getLogger("fontTools").setLevel(logging.WARNING)  # PDF font subsetting chatter
    figures = out_dir / "figures"
    style.save(step_time_vs_shape(load_run(out_dir / "profile")), figures, "step_time_vs_shape")
    style.save(predicted_vs_measured(model, test), figures, "predicted_vs_measured")


def predicted_vs_measured(model: FittedCostModel, steps: pd.DataFrame):
    """Predicted against measured step time (log-log), with the diagonal."""
    from analysis import style

    rows = steps[steps["n_seqs"] > 0]
    measured, predicted = rows["seconds"].to_numpy() * 1e3, model.predict_frame(rows) * 1e3
    mixed = rows["n_prefill_seqs"].to_numpy() > 0
    with style.styled():
        fig, axes = style.figure(1, 1)
        ax = axes[0]
        for mask, label in ((~mixed, "decode only"), (mixed, "with prefill")):
            ax.scatter(measured[mask], predicted[mask], s=10, alpha=0.7, linewidths=0, label=label)
        low, high = min(measured.min(), predicted.min()), max(measured.max(), predicted.max())
        ax.plot([low, high], [low, high], color="black", lw=0.8)
        ax.set(xscale="log", yscale="log", xlabel="measured step time (ms)",
               ylabel="predicted step time (ms)", title="held-out steps")
        ax.legend()
    return fig


def format_errors(record: dict) -> str:
    lines = [f"{'':12s}{'train':>10s}{'held out':>10s}"]
    for key, label in ERRORS:
        cells = [_fmt(record[part][key], key) for part in ("train_error", "held_out_error")]
        lines.append(f"{label:12s}{cells[0]:>10s}{cells[1]:>10s}")
    return "\n".join(lines)


def _fmt(value: float, key: str) -> str:
    if key == "n":
        return str(int(value))
    if key == "r2":
        return f"{value:.4f}"
    return f"{100 * value:.1f}%"


@hydra.main(config_path="../conf", config_name="calibrate", version_base=None)
def _main(cfg: DictConfig) -> None:
    cfg = OmegaConf.to_container(cfg, resolve=True)
    if cfg["engine"]["kind"] != "mlx":
        raise ValueError("calibration measures the real engine: engine=mlx")
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    stack = build_stack(cfg)
    use_timer(stack, cfg.get("timer", "auto"))
    record = calibrate(stack, cfg, run_dir)
    print(f"calibrated {record['model']} {record['dtype']} on {record['device']} "
          f"({record['steps']} steps after warm-up, timed by the {record['timer']} clock)")
    print(format_errors(record))
    print(f"\nfitted_path: {cfg.get('fitted_path') or record['fitted_path']}")
    print(f"run directory: {run_dir.resolve()}")


def main() -> None:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
    _main()


if __name__ == "__main__":
    sys.exit(main())
