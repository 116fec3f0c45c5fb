"""The simulator is deterministic: the same config and seed give identical requests.parquet,
for one engine and for a cluster (colocated with prefix-affinity routing, disaggregated),
also across processes with different string-hash seeds (set and dict orders)."""
import os
import subprocess
import sys

import pandas as pd
import pytest

from cluster_runs import SIM_TINY
from experiments.replay import run_experiment
from replay_runs import REPO, SIM_TINY as REPLAY_SIM_TINY, config
from testbed.replay.recorder import read_run

# A sample of the conversation trace, sped up and with a small cache: queues and preemptions.
LOAD = ("trace.transforms.head=120", "trace.transforms.rate_scale=4",
        "engine.kv_memory_gb=0.0004")
CLUSTERS = {
    # Mooncake's shared prompt blocks, so routing follows the replicas' prefix caches.
    "prefix_affinity": ("cluster.replicas=3", "cluster/router=prefix_affinity", "trace=mooncake",
                        "trace.transforms.head=60", "engine.kv_memory_gb=2",
                        "engine.host_kv_memory_gb=0", "report=false", "progress=false"),
    "disaggregated": (*SIM_TINY, "cluster=disaggregated", "cluster.prefill.replicas=2",
                      "cluster.decode.replicas=2", *LOAD),
}


def test_single_engine_twice_in_one_process(tmp_path):
    cfg = config(*REPLAY_SIM_TINY, *LOAD)
    run_experiment(cfg, tmp_path / "a")
    run_experiment(cfg, tmp_path / "b")
    a, b = read_run(tmp_path / "a"), read_run(tmp_path / "b")
    assert a.steps["n_preempted"].sum() > 0
    pd.testing.assert_frame_equal(a.requests, b.requests)


def cluster_in_subprocess(run_dir, overrides, hash_seed: str):
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "OPENBLAS_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "experiments.cluster", *overrides,
                          f"hydra.run.dir={run_dir}"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return read_run(run_dir)


@pytest.mark.parametrize("name", CLUSTERS)
def test_cluster_across_processes_and_hash_seeds(tmp_path, name):
    a = cluster_in_subprocess(tmp_path / "a", CLUSTERS[name], hash_seed="1")
    b = cluster_in_subprocess(tmp_path / "b", CLUSTERS[name], hash_seed="2")
    assert a.requests["replica"].nunique() > 1
    assert a.requests["cached_prompt_tokens"].sum() > 0 or name != "prefix_affinity"
    pd.testing.assert_frame_equal(a.requests, b.requests)
    pd.testing.assert_frame_equal(a.steps, b.steps)
