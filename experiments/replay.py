"""Replay a trace through a serving stack and log everything: the testbed's main job.

    python -m experiments.replay [overrides...]        (also installed as `testbed-replay`)

Builds the trace, the engine (real MLX or simulated), the scheduler and the KV manager from
the Hydra config (`conf/`), replays, writes Parquet logs + run.json + summary.json into the
run directory, prints the summary, and renders the report with figures.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path

# One BLAS thread per replay unless told otherwise; OpenBLAS reads this when `import testbed`
# loads it, just below. A serving step's matmuls are small, and on a machine shared with
# other jobs (or a sweep's parallel jobs) a second thread cost 2.5-3.5x here instead of
# gaining. On a large idle CPU set OPENBLAS_NUM_THREADS yourself.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

import testbed  # noqa: F401  (fast BLAS before mlx)
import mlx.core as mx
from testbed.metrics import SLO, format_summary, summarize
from testbed.replay.driver import replay
from testbed.replay.recorder import Recorder, read_run
from testbed.request import Request
from testbed.stack import Stack, build_stack
from testbed.traces.build import build_trace
from testbed.traces.schema import Trace
from testbed.traces.tokens import with_prompt_tokens

# What a run writes into its directory (besides Hydra's .hydra/ and log).
RUN_OUTPUTS = ("steps.parquet", "requests.parquet", "tokens.parquet", "run.json", "summary.json",
               "report.md", "report.html", "figures")


def run_experiment(cfg: DictConfig | dict, run_dir: str | Path, stack: Stack | None = None) -> dict:
    """Replay as `cfg` says into `run_dir`; returns the summary. Skips a completed run.
    `stack`: an engine built beforehand (e.g. one warmed up), instead of building one."""
    cfg = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    run_dir = Path(run_dir)
    done = completed_or_cleared(run_dir, "replay")
    if done is not None:
        return done
    trace = experiment_trace(cfg)
    stack = stack or build_stack(cfg)
    requests = trace_requests(trace, cfg, stack.model_config.vocab_size)
    slo = SLO.from_dict(cfg.get("slo") or {})
    meta = {"experiment": "replay", "config": cfg, "trace": trace_info(trace), **stack.info}
    recorder = Recorder(run_dir, tokens=bool(cfg.get("record_tokens", True)),
                        flush_every=int(cfg.get("flush_every", 5000)))
    real = "weights_bytes" in stack.info  # the MLX engine: its memory is worth a record
    with recorder:
        recorder.start(meta)
        if real:
            mx.reset_peak_memory()
        replay(requests, stack.engine, recorder, slo=slo, progress=bool(cfg.get("progress", True)),
               max_steps=cfg.get("max_steps"))
        recorder.flush()
        data = read_run(run_dir)
        summary = summarize(data.requests, data.steps, data.tokens, slo)
        if real:
            summary |= {"peak_memory_bytes": mx.get_peak_memory(),
                        "weights_bytes": stack.info["weights_bytes"],
                        "kv_pool_bytes": stack.info["kv_pool_bytes"]}
        recorder.close(summary=summary)
    return summary


def experiment_trace(cfg: dict) -> Trace:
    """The trace `cfg["trace"]` describes."""
    return build_trace(_trace_spec(cfg["trace"]))


def trace_requests(trace: Trace, cfg: dict, vocab_size: int) -> list[Request]:
    """The trace's requests, outputs running to the trace's lengths; for the real engine
    (`cfg["engine"]["kind"] == "mlx"`) with prompt token ids of a `vocab_size` vocabulary."""
    if cfg["engine"]["kind"] == "mlx":
        trace = with_prompt_tokens(trace, vocab_size, seed=cfg.get("seed", 0))
    return trace.to_requests(ignore_eos=True)


def trace_info(trace: Trace) -> dict:
    """What run.json records about the replayed trace."""
    return {"name": trace.name, "source": trace.source, "requests": len(trace),
            "duration_s": trace.duration_s, "notes": list(trace.notes),
            "license": trace.license, "citation": trace.citation}


def _trace_spec(trace_cfg: dict) -> dict:
    """`trace.path` set: read that file in `trace.format`; else the shipped `trace.name`."""
    spec = {k: v for k, v in trace_cfg.items() if v not in (None, {}, [])}
    spec["transforms"] = {k: v for k, v in (spec.get("transforms") or {}).items() if v is not None}
    if "path" in spec:
        spec.pop("name", None)
    elif "name" in spec:
        spec.pop("format", None)
    return spec


def completed_or_cleared(run_dir: Path, tag: str) -> dict | None:
    """The summary of a run already completed in `run_dir` (a rerun sweep skips it), else
    None, with the outputs of an earlier run that failed or was killed there removed: its
    part files would otherwise mix into the new tables."""
    done = _completed_summary(run_dir)
    if done is not None:
        print(f"[{tag}] {run_dir} already completed; skipping (delete it to run again)")
        return done
    old = [run_dir / name for name in RUN_OUTPUTS if (run_dir / name).exists()]
    if not old:
        return None
    print(f"[{tag}] {run_dir} holds an incomplete run; replaying it afresh")
    for path in old:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def _completed_summary(run_dir: Path) -> dict | None:
    try:
        meta = json.loads((run_dir / "run.json").read_text())
        if meta.get("status") == "complete":
            return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        pass
    return None


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def _main(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    summary = run_experiment(cfg, run_dir)
    print(format_summary(summary))
    print(f"\nrun directory: {run_dir.resolve()}")
    for name in ("requests.parquet", "steps.parquet", "tokens.parquet", "run.json", "summary.json"):
        if (run_dir / name).exists():
            print(f"  {name:18s} {(run_dir / name).resolve()}")
    if cfg.get("report", True):
        from analysis.report import write_report
        logging.getLogger("fontTools").setLevel(logging.WARNING)  # PDF font subsetting chatter
        report = write_report(run_dir)
        print(f"  {'report':18s} {Path(report).resolve()}")
        print(f"  {'figures':18s} {(Path(report).parent / 'figures').resolve()}")
    return summary.get("goodput_req_s")


def main() -> None:
    _main()


if __name__ == "__main__":
    sys.exit(main())
