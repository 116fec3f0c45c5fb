"""The prefix-cache capacity preset end to end at a tiny scale (the first 60 Mooncake
requests, two capacities): hit rates grow with capacity up to the infinite-cache bound."""
from __future__ import annotations

from analysis import paper_metrics as pm
from experiments.replay import experiment_trace
from preset_runs import reproduce
from replay_runs import config


def test_prefix_capacity(tmp_path):
    md, runs = reproduce(tmp_path, "prefix_capacity", "policy=paged,prefix_lru,radix_fifo",
                         "trace.transforms.head=60", "engine.kv_memory_gb=16,400")
    assert len(runs) == 6 and "infinite cache (bound)" in md
    hits = runs.pivot_table(index="label", columns="engine.kv_memory_gb", values="prefix_hit_rate")
    trace = experiment_trace(config("experiment=prefix_capacity", "trace.transforms.head=60"))
    bound = pm.prefix_hit_bound(trace.df["prompt_len"], trace.df["block_hashes"], 512, 64)
    assert (hits.loc["paged"] == 0).all()
    for cache in ("prefix_lru", "radix_fifo"):
        assert 0 < hits.loc[cache, 16] <= hits.loc[cache, 400] <= bound + 1e-9
