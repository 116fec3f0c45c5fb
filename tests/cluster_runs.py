"""Helpers for the cluster tests: the cluster experiment's config, small request lists, and
runs that collect their rows in memory."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from experiments.cluster import REQUEST_COLUMNS, STEP_COLUMNS
from testbed.cluster import build_cluster, run_cluster
from testbed.replay.recorder import Recorder, read_run
from testbed.request import Request, SamplingParams

CONF = Path(__file__).resolve().parents[1] / "conf"
# The simulator on the tiny model: quick, and a small model on the CPU profile.
SIM_TINY = ("model=qwen2-tiny", "hardware=cpu", "engine.kv_memory_gb=0.01",
            "engine.host_kv_memory_gb=0", "report=false",
            "progress=false")


def cluster_config(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("cluster_replay", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)


def requests(rows: list[tuple], hash_block_size: int = 16) -> list[Request]:
    """(arrival_s, prompt_len, output_len[, block_hashes]) rows as requests r0, r1, ..."""
    out = []
    for i, row in enumerate(rows):
        arrival, prompt, output, *hashes = row
        out.append(Request(f"r{i}", arrival, prompt, output,
                           block_hashes=hashes[0] if hashes else None,
                           hash_block_size=hash_block_size if hashes else 0,
                           sampling=SamplingParams(ignore_eos=True)))
    return out


def run(cfg: dict, reqs: list[Request], run_dir: Path, cluster=None):
    """Replay `reqs` on the cluster `cfg` builds (or `cluster`); the run's tables and the cluster."""
    cluster = cluster or build_cluster(cfg)[0]
    with Recorder(run_dir, tokens=True, step_columns=STEP_COLUMNS,
                  request_columns=REQUEST_COLUMNS) as recorder:
        recorder.start({})
        run_cluster(reqs, cluster, recorder)
    return read_run(run_dir), cluster


def replica_of(requests_table: pd.DataFrame) -> dict[str, int]:
    return dict(zip(requests_table["request_id"], requests_table["replica"]))
