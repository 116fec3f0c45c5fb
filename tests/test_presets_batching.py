"""The vLLM paging and Orca batching presets end to end at a tiny scale (a few requests, two
or three policies, two load points): the comparison they write, and the directions the
papers report that a handful of requests already shows."""
from __future__ import annotations

from preset_runs import reproduce, top


def test_vllm_paging(tmp_path):
    md, runs = reproduce(tmp_path, "vllm_paging", "policy=contiguous_max,contiguous_exact,paged",
                         "trace.transforms.head=24", "trace.transforms.rate_scale=0.3,3",
                         "engine.kv_memory_gb=2")  # ~10k tokens of KV: memory binds
    assert len(runs) == 6 and "| contiguous_exact |" in md and "paged gain" in md
    # Reserving ahead wastes allocated slots; pages waste at most a block's tail per sequence.
    for _, group in runs.groupby("offered_rate_req_s"):
        waste = group.set_index("label")["kv_waste"]
        assert waste["paged"] < 0.04 < waste["contiguous_exact"] < waste["contiguous_max"]
    at_top = top(runs)
    assert at_top.loc["paged", "mean_running"] > at_top.loc["contiguous_max", "mean_running"]


def test_orca_iteration(tmp_path):
    md, runs = reproduce(tmp_path, "orca_iteration", "trace.transforms.head=30",
                         "trace.transforms.rate_scale=0.5,4")
    assert len(runs) == 4 and "| static |" in md and "| orca |" in md
    at_top = top(runs)
    assert at_top.loc["orca", "throughput_req_s"] > at_top.loc["static", "throughput_req_s"]
