"""The simulator replays deterministically: the same config and seed give the same tables,
also across processes with different string-hash seeds (set and dict orders)."""
import subprocess

import pandas as pd
import pytest

from experiments.replay import run_experiment
from replay_runs import REPO, SIM_TINY, config, replay_command, replay_env
from testbed.replay.recorder import read_run

# The main job's trace sample and a synthetic workload, both with
# prefix caching and a cache small enough to preempt.
WORKLOADS = {
    "azure_sample": ("trace.transforms.head=150",
                     "trace.transforms.rate_scale=4", "engine.kv_memory_gb=0.0004"),
    "synthetic": ("trace=synthetic", "trace.synthetic.n=150", "engine.kv_memory_gb=0.0004",
                  "scheduler=sarathi", "cache=radix"),
}


def replay_in_subprocess(run_dir, overrides, hash_seed: str, seed: int = 0):
    env = {**replay_env(), "PYTHONHASHSEED": hash_seed}
    out = subprocess.run(replay_command(*SIM_TINY, *overrides, f"seed={seed}",
                                        f"hydra.run.dir={run_dir}"),
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return read_run(run_dir)


@pytest.mark.parametrize("workload", WORKLOADS)
def test_same_config_and_seed_give_identical_tables(tmp_path, workload):
    overrides = WORKLOADS[workload]
    a = replay_in_subprocess(tmp_path / "a", overrides, hash_seed="1")
    b = replay_in_subprocess(tmp_path / "b", overrides, hash_seed="2")
    assert a.steps["n_preempted"].sum() > 0  # the runs are not trivially serial
    pd.testing.assert_frame_equal(a.requests, b.requests)
    pd.testing.assert_frame_equal(a.steps, b.steps)
    pd.testing.assert_frame_equal(a.tokens, b.tokens)


def test_another_seed_gives_another_workload(tmp_path):
    for seed in (0, 1):
        run_experiment(config(*SIM_TINY, *WORKLOADS["synthetic"], f"seed={seed}"), tmp_path / str(seed))
    a, b = (read_run(tmp_path / str(seed)).requests for seed in (0, 1))
    assert not a[["arrival_s", "prompt_len"]].equals(b[["arrival_s", "prompt_len"]])
