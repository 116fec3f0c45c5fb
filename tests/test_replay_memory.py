"""A real-engine replay records its memory: the KV pool allocated once from the budget, and a
peak of device memory within weights + pool + 15% on the main job's first requests (a
pool copied per step, or one more pool, would break it). Steps of ~2,000 tokens in the whole
main job add ~140 MB of activations on MLX's CPU backend, whose attention materializes its
scores: its peak is ~1.3x weights + pool."""
from experiments.replay import run_experiment
from replay_runs import config
from testbed.metrics import format_summary


def test_peak_memory_stays_within_weights_and_pool(tmp_path):
    cfg = config("trace.transforms.head=12", "report=false", "progress=false")
    budget = cfg["engine"]["kv_memory_gb"] * 1e9
    summary = run_experiment(cfg, tmp_path)
    assert summary["n_finished"] == 12
    weights, pool, peak = (summary[k] for k in ("weights_bytes", "kv_pool_bytes", "peak_memory_bytes"))
    assert 0.95 * budget <= pool <= 1.01 * budget  # the budget in whole blocks, plus a scratch block
    assert weights > 0 and pool < peak <= 1.15 * (weights + pool), (weights, pool, peak)
    assert "peak device memory (bytes)" in format_summary(summary)


def test_a_simulated_run_has_no_memory_rows(tmp_path):
    cfg = config("engine=sim", "model=qwen2-tiny", "hardware=cpu", "engine.kv_memory_gb=0.01",
                 "trace.transforms.head=5", "report=false", "progress=false")
    summary = run_experiment(cfg, tmp_path)
    assert "peak_memory_bytes" not in summary
    assert "peak device memory" not in format_summary(summary)
