"""Replay a trace on a cluster of replicas behind a router, optionally with disaggregated
prefill and decode pools, and log everything as the single-engine replay does.

    python -m experiments.cluster [overrides...]      (conf/cluster_replay.yaml, conf/cluster/)

Writes into the run directory the replay's files (steps.parquet and requests.parquet with
`replica` columns, tokens.parquet, run.json, summary.json: the whole cluster) and
replicas.json (one summary per replica); prints both.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import hydra
import pyarrow as pa
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

import testbed  # noqa: F401  (fast BLAS before mlx)
from experiments.replay import completed_or_cleared, experiment_trace, trace_info, trace_requests
from testbed.cluster import build_cluster, describe, format_replicas, replica_summaries, run_cluster
from testbed.metrics import SLO, format_summary, summarize
from testbed.replay.recorder import Recorder, read_run

STEP_COLUMNS = {"replica": pa.int64()}
REQUEST_COLUMNS = {"replica": pa.int64(), "prefill_replica": pa.int64(), "kv_transfer_s": pa.float64()}


def run_cluster_experiment(cfg: DictConfig | dict, run_dir: str | Path) -> dict:
    """Replay as `cfg` says on its cluster into `run_dir`; returns the whole cluster's
    summary (the per-replica ones are in replicas.json). Skips a completed run."""
    cfg = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    run_dir = Path(run_dir)
    done = completed_or_cleared(run_dir, "cluster")
    if done is not None:
        return done
    trace = experiment_trace(cfg)
    cluster, first = build_cluster(cfg)
    requests = trace_requests(trace, cfg, first.model_config.vocab_size)
    slo = SLO.from_dict(cfg.get("slo") or {})
    meta = {"experiment": "cluster", "config": cfg, "trace": trace_info(trace),
            "replicas": describe(cluster), **first.info}
    recorder = Recorder(run_dir, tokens=bool(cfg.get("record_tokens", True)),
                        flush_every=int(cfg.get("flush_every", 5000)),
                        step_columns=STEP_COLUMNS, request_columns=REQUEST_COLUMNS)
    with recorder:
        recorder.start(meta)
        run_cluster(requests, cluster, recorder, slo=slo, progress=bool(cfg.get("progress", True)),
                    max_steps=cfg.get("max_steps"))
        recorder.flush()
        data = read_run(run_dir)
        summary = summarize(data.requests, data.steps, data.tokens, slo)
        replicas = replica_summaries(data.requests, data.steps,
                                     [r.role for r in cluster.replicas], slo)
        (run_dir / "replicas.json").write_text(json.dumps(
            {"replicas": replicas}, indent=2, allow_nan=False) + "\n")
        recorder.close(summary=summary)
    return summary


@hydra.main(config_path="../conf", config_name="cluster_replay", version_base=None)
def _main(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    summary = run_cluster_experiment(cfg, run_dir)
    print(format_summary(summary))
    replicas = json.loads((run_dir / "replicas.json").read_text())["replicas"]
    print("\n" + format_replicas(replicas))
    print(f"\nrun directory: {run_dir.resolve()}")
    if cfg.get("report", True):
        from analysis.report import write_report
        logging.getLogger("fontTools").setLevel(logging.WARNING)
        print(f"report: {Path(write_report(run_dir)).resolve()}")
    return summary.get("goodput_req_s")


def main() -> None:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
    _main()


if __name__ == "__main__":
    sys.exit(main())
