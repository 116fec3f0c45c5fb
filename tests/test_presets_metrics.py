"""The derived metrics of the paper comparisons (analysis.paper_metrics) on hand-computed
cases, the prefix-hit bound against a brute-force longest-common-prefix oracle, and the
simulator's prefix cache reaching that bound when nothing is ever evicted."""
from __future__ import annotations

import json
import math
import random

import pandas as pd
import pytest

from analysis import paper_metrics as pm
from experiments.replay import run_experiment
from replay_runs import config


def steps_frame(rows: list[tuple]) -> pd.DataFrame:
    """(seconds, n_seqs, n_running, sum_context, kv_blocks_used, kv_blocks_free) per step."""
    return pd.DataFrame(rows, columns=list(pm.STEP_COLUMNS))


def test_mean_running_weighs_steps_by_their_duration():
    steps = steps_frame([(1.0, 2, 2, 0, 0, 10), (3.0, 4, 4, 0, 0, 10)])
    assert pm.mean_running(steps) == pytest.approx((2 * 1 + 4 * 3) / 4)
    assert math.isnan(pm.mean_running(steps_frame([])))


def test_kv_waste_and_token_share_count_only_fully_scheduled_steps():
    steps = steps_frame([
        (1.0, 2, 2, 40, 4, 6),   # 40 tokens in 4 blocks of 16 = 64 slots; pool of 10 blocks
        (2.0, 3, 3, 90, 8, 2),   # 90 tokens in 128 slots
        (5.0, 1, 3, 10, 8, 2),   # not every running sequence scheduled: left out
        (4.0, 0, 0, 0, 0, 10),   # idle: no allocated slot (left out of waste, not of the share)
    ])
    assert pm.kv_waste(steps, 16) == pytest.approx(1 - (40 * 1 + 90 * 2) / (64 * 1 + 128 * 2))
    assert pm.token_share(steps, 16) == pytest.approx((40 * 1 + 90 * 2) / (160 * (1 + 2 + 4)))
    assert math.isnan(pm.kv_waste(steps.iloc[3:], 16))


@pytest.mark.parametrize("rates,use,expected", [
    ([1, 2, 3, 4], [0.2, 0.5, 0.9, 1.3], pm.Capacity(3 + (1 - 0.9) / (1.3 - 0.9), "=")),
    ([4, 1, 3, 2], [1.3, 0.2, 0.9, 0.5], pm.Capacity(3.25, "=")),   # any order
    ([1, 2, 3], [0.1, 0.2, 0.3], pm.Capacity(3.0, ">=")),
    ([1, 2, 3], [1.5, 2.0, 3.0], pm.Capacity(1.0, "<")),
    ([1, 2, 3], [0.5, math.nan, 0.5], pm.Capacity(1.0, "=")),       # NaN: a miss, no interpolation
    ([1, 2, 3], [0.5, 0.8, 1.0], pm.Capacity(3.0, ">=")),           # exactly at the limit meets it
])
def test_capacity_interpolates_the_first_crossing(rates, use, expected):
    got = pm.capacity(rates, use)
    assert got.bound == expected.bound
    assert got.rate == pytest.approx(expected.rate)


def test_capacity_text_and_empty_sweep():
    assert str(pm.Capacity(2.5, ">=")) == ">=2.5" and str(pm.Capacity(2.5, "=")) == "2.5"
    with pytest.raises(ValueError, match="at least one"):
        pm.capacity([], [])


def test_usage_is_the_worst_ratio_to_a_limit():
    frame = pd.DataFrame({"a": [0.05, 0.2, None], "b": [1.0, 1.0, 1.0]})
    use = pm.usage(frame, {"a": 0.1, "b": 2.0})
    assert use.tolist()[:2] == pytest.approx([0.5, 2.0])
    assert math.isnan(use.iloc[2])


def prompts_with_shared_prefixes(rng: random.Random, n: int, hash_block: int, max_blocks: int = 7):
    """Prompts as hash-id lists grown from a few roots, so some share prefixes and some
    share a later block behind a different prefix (which must not hit)."""
    prompts, next_id = [], 0
    for _ in range(n):
        if prompts and rng.random() < 0.7:
            base = rng.choice(prompts)[1]
            keep = rng.randint(0, len(base))
            hashes = list(base[:keep])
        else:
            hashes = []
        if prompts and rng.random() < 0.3:  # a block seen elsewhere, behind another prefix
            hashes.append(rng.choice(rng.choice(prompts)[1]))
        hashes = hashes[:max_blocks - 1]
        extra = rng.randint(0 if hashes else 1, max(1, min(3, max_blocks - len(hashes))))
        hashes += list(range(next_id, next_id + extra))
        next_id += extra
        prompt_len = (len(hashes) - 1) * hash_block + rng.randint(1, hash_block)
        prompts.append((prompt_len, hashes))
    return prompts


def brute_force_bound(prompts, hash_block: int, block: int) -> float:
    """Longest common token prefix with any earlier prompt, in whole blocks both prompts hold."""
    def tokens(prompt_len, hashes):
        return [(h, k) for h in hashes for k in range(hash_block)][:prompt_len]

    seqs = [tokens(*p) for p in prompts]
    hit = 0
    for i, seq in enumerate(seqs):
        best = 0
        for earlier in seqs[:i]:
            common = 0
            while common < min(len(seq), len(earlier)) and seq[common] == earlier[common]:
                common += 1
            best = max(best, common // block * block)
        hit += min(best, (len(seq) - 1) // block * block)
    return hit / sum(len(s) for s in seqs)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("block", [4, 8, 16])
def test_prefix_hit_bound_matches_brute_force(seed, block):
    prompts = prompts_with_shared_prefixes(random.Random(seed), 25, 16)
    bound = pm.prefix_hit_bound([p for p, _ in prompts], [h for _, h in prompts], 16, block)
    assert bound == pytest.approx(brute_force_bound(prompts, 16, block))
    assert 0 < bound < 1


def test_prefix_hit_bound_needs_dividing_blocks_and_repeat_share():
    with pytest.raises(ValueError, match="must divide"):
        pm.prefix_hit_bound([10], [[1]], 16, 6)
    assert pm.repeated_block_share([[1, 2], [1, 3], [2, 9]]) == pytest.approx(2 / 6)


def test_simulated_prefix_cache_reaches_the_bound_when_nothing_is_evicted(tmp_path):
    prompts = prompts_with_shared_prefixes(random.Random(7), 30, 512)
    path = tmp_path / "trace.jsonl"
    # Ten seconds apart: every request has finished (and its blocks are cached) before the next.
    path.write_text("".join(json.dumps({"timestamp": 10_000 * i, "input_length": p,
                                        "output_length": 3, "hash_ids": h}) + "\n"
                            for i, (p, h) in enumerate(prompts)))
    cfg = config("engine=sim", "model=qwen2-tiny", "hardware=cpu",
                 "engine.kv_memory_gb=0.1", "trace=mooncake", f"trace.path={path}",
                 "cache=prefix", "report=false", "progress=false", "record_tokens=false")
    summary = run_experiment(cfg, tmp_path / "run")
    assert summary["n_finished"] == len(prompts)
    bound = pm.prefix_hit_bound([p for p, _ in prompts], [h for _, h in prompts], 512, 16)
    assert summary["prefix_hit_rate"] == pytest.approx(bound)
