"""The preset variants: the real-engine `_cpu` presets and the synthetic-trace ones compose to
what their files say, reproduce finds every preset by its `paper.preset`, and one `_cpu`
preset runs end to end on the real engine at a tiny scale."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from analysis.papers import COMPARISONS
from experiments.replay import experiment_trace
from experiments.reproduce import presets
from preset_runs import reproduce, top
from replay_runs import CONF, config

SIMULATED = ("vllm_paging", "sarathi_chunking", "orca_iteration", "prefix_capacity", "sjf_vs_fcfs")


def launcher_jobs(*overrides: str) -> int:
    """How many runs of the multirun the launcher starts at once."""
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose("config", overrides=list(overrides), return_hydra_config=True).hydra.launcher.n_jobs


def test_reproduce_finds_every_preset_and_only_those():
    assert set(presets()) == {*SIMULATED, *(f"{name}_cpu" for name in SIMULATED),
                              "vllm_paging_sharegpt", "sjf_vs_fcfs_heavytail"}


@pytest.mark.parametrize("name", SIMULATED)
def test_cpu_variant_runs_its_papers_comparison_on_the_real_engine(name):
    paper, cpu = config(f"experiment={name}"), config(f"experiment={name}_cpu")
    assert paper["engine"]["kind"] == "sim" and cpu["engine"]["kind"] == "mlx"
    assert (cpu["model"]["name"], cpu["hardware"]["name"]) == ("qwen2-small", "cpu")
    assert cpu["paper"]["preset"] == paper["paper"]["preset"] == name in COMPARISONS
    assert cpu["policies"] == paper["policies"]  # the same policies, fewer of them swept
    assert launcher_jobs(f"experiment={name}_cpu") == 1  # measured steps: one run at a time
    assert len(experiment_trace(cpu).df) <= 100


def test_sharegpt_variant_has_short_prompts_and_long_outputs():
    trace = experiment_trace(config("experiment=vllm_paging_sharegpt")).df
    assert len(trace) == 1500
    assert trace["prompt_len"].mean() == pytest.approx(161, rel=0.15)
    assert trace["output_len"].mean() == pytest.approx(338, rel=0.15)


def test_heavytail_variant_keeps_the_azure_means_with_a_heavier_output_tail():
    heavy = experiment_trace(config("experiment=sjf_vs_fcfs_heavytail")).df
    azure = experiment_trace(config("experiment=sjf_vs_fcfs")).df
    assert len(heavy) == len(azure) == 1500
    cv = lambda x: float(np.std(x) / np.mean(x))  # noqa: E731
    assert cv(heavy["output_len"]) > 2 * cv(azure["output_len"])
    assert heavy["output_len"].median() < azure["output_len"].median()
    assert heavy["prompt_len"].mean() == pytest.approx(1155, rel=0.15)


def test_vllm_paging_cpu_on_the_real_engine(tmp_path):
    md, runs = reproduce(tmp_path, "vllm_paging_cpu", "policy=contiguous_max,paged",
                         "trace.transforms.head=8", "trace.transforms.rate_scale=20")
    assert len(runs) == 2 and "| contiguous_max |" in md
    at_top = top(runs)
    assert (at_top["n_finished"] == 8).all()
    # Three max-length reservations fill the 6 MB pool; pages waste only the tail of each
    # sequence's last 16-token block and hold more sequences at once.
    assert at_top.loc["paged", "kv_waste"] < 0.1 < 0.5 < at_top.loc["contiguous_max", "kv_waste"]
    # The eight requests arrive within a quarter of a second, so they overlap; two max-length
    # reservations fill the pool, pages hold them all.
    peak = {run.name.rsplit("policy=")[1].split(",")[0]: pd.read_parquet(run / "steps.parquet")["n_running"].max()
            for run in (tmp_path / "vllm_paging_cpu").glob("*policy=*")}
    assert peak["contiguous_max"] == 2 < 4 < peak["paged"]
