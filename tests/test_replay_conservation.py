"""Conservation: every trace request ends up in requests.parquet exactly once (finished, or
rejected with a reason), and the latency summary equals what numpy recomputes from the raw
token times in tokens.parquet."""
import numpy as np
import pandas as pd
import pytest

from experiments.replay import run_experiment
from replay_runs import MLX_TINY, SIM_TINY, config, write_trace
from testbed.replay.recorder import read_run

# qwen2-tiny allows 4096 positions; both KV budgets below hold 73 blocks of 16 tokens.
TOO_LONG = {"request_id": "too_long", "prompt_len": 3000, "output_len": 2000}  # > 4096 positions
NO_ROOM = {"request_id": "no_room", "prompt_len": 1900, "output_len": 100}  # 125 blocks > 73
SIM_KV = "engine.kv_memory_gb=0.0003"  # bfloat16 qwen2-tiny: 4096 bytes a block
MLX_KV = "engine.kv_memory_gb=0.0006"  # float32: 8192 bytes a block


def trace_rows(n: int, rate: float, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1 / rate, n))
    rows = [{"request_id": f"r{i:03d}", "arrival_s": float(arrivals[i]),
             "prompt_len": int(rng.integers(20, 300)), "output_len": int(rng.integers(1, 60))}
            for i in range(n)]
    rows[n // 3] = {**TOO_LONG, "arrival_s": rows[n // 3]["arrival_s"]}
    rows[n // 2] = {**NO_ROOM, "arrival_s": rows[n // 2]["arrival_s"]}
    return rows


def replay_file(tmp_path, rows, *overrides):
    trace = write_trace(tmp_path / "trace.csv", rows)
    cfg = config(*overrides, "trace=generic", f"trace.path={trace}", "flush_every=7")
    summary = run_experiment(cfg, tmp_path / "run")
    return summary, read_run(tmp_path / "run")


@pytest.fixture(scope="module")
def sim_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sim")
    rows = trace_rows(120, rate=40.0, seed=1)  # a burst: the 73-block cache preempts
    return rows, *replay_file(tmp, rows, *SIM_TINY, SIM_KV)


@pytest.fixture(scope="module")
def mlx_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlx")
    rows = trace_rows(14, rate=50.0, seed=2)
    return rows, *replay_file(tmp, rows, *MLX_TINY, MLX_KV)


RUNS = ["sim_run", "mlx_run"]


@pytest.mark.parametrize("run", RUNS)
def test_every_request_ends_exactly_once(run, request):
    rows, summary, data = request.getfixturevalue(run)
    reqs = data.requests
    assert sorted(reqs["request_id"]) == sorted(r["request_id"] for r in rows)
    assert not reqs["request_id"].duplicated().any()

    by_id = reqs.set_index("request_id")
    rejected = by_id[by_id["status"] == "rejected"]
    assert sorted(rejected.index) == ["no_room", "too_long"]
    assert "max_model_len" in rejected.loc["too_long", "reason"]
    assert rejected.loc["no_room", "reason"]
    assert (rejected["n_output_tokens"] == 0).all() and rejected["first_token_s"].isna().all()

    finished = by_id[by_id["status"] == "finished"]
    assert len(finished) == len(rows) - 2
    want = pd.DataFrame(rows).set_index("request_id").loc[finished.index]
    assert (finished["n_output_tokens"] == want["output_len"]).all()  # ignore_eos: exact lengths
    assert (finished["prompt_len"] == want["prompt_len"]).all()
    first = min(r["arrival_s"] for r in rows)  # the reader counts time from the first request
    assert np.allclose(finished["arrival_s"], want["arrival_s"] - first)

    assert (summary["n_requests"], summary["n_finished"], summary["n_rejected"]) == (
        len(rows), len(rows) - 2, 2)
    meta = data.meta
    assert meta["status"] == "complete"
    assert meta["counts"]["requests"] == len(rows)
    assert meta["counts"]["requests_rejected"] == 2


def test_the_small_cache_preempted(sim_run):
    """The sim trace is built to overflow the cache, so conservation is tested under preemption."""
    _, summary, data = sim_run
    assert summary["preemptions"] > 0
    assert data.requests["n_preemptions"].sum() > 0


@pytest.mark.parametrize("run", RUNS)
def test_token_log_matches_request_rows(run, request):
    _, _, data = request.getfixturevalue(run)
    tokens = data.tokens.sort_values(["request_id", "index"])
    finished = data.requests[data.requests["status"] == "finished"].set_index("request_id")
    assert set(tokens["request_id"]) == set(finished.index)
    for rid, group in tokens.groupby("request_id"):
        assert group["index"].tolist() == list(range(len(group)))
        assert (np.diff(group["t"].to_numpy()) >= 0).all()
        row = finished.loc[rid]
        assert len(group) == row["n_output_tokens"]
        assert group["t"].iloc[0] == row["first_token_s"]
        assert group["t"].iloc[-1] == row["finish_s"]


def numpy_stats(values) -> dict[str, float]:
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    return {"mean": v.mean(), "median": np.median(v), "p90": np.percentile(v, 90),
            "p99": np.percentile(v, 99)}


@pytest.mark.parametrize("run", RUNS)
def test_summary_equals_metrics_recomputed_from_tokens(run, request):
    _, summary, data = request.getfixturevalue(run)
    arrival = data.requests.set_index("request_id")["arrival_s"]
    t = data.tokens.sort_values(["request_id", "index"])
    per = t.groupby("request_id")["t"].agg(first="min", last="max", n="size")
    per["arrival"] = arrival.loc[per.index]
    ttft = per["first"] - per["arrival"]
    e2e = per["last"] - per["arrival"]
    tpot = np.where(per["n"] > 1, (per["last"] - per["first"]) / (per["n"] - 1), np.nan)
    itl = t.groupby("request_id")["t"].diff().dropna()

    assert summary["output_tokens"] == len(t)
    assert summary["prompt_tokens"] == int(
        data.requests.loc[data.requests["status"] == "finished", "prompt_len"].sum())
    for name, values in (("ttft", ttft), ("e2e", e2e), ("tpot", tpot), ("itl", itl)):
        for stat, value in numpy_stats(values).items():
            assert summary[f"{name}_{stat}_s"] == pytest.approx(value, rel=1e-9, abs=1e-12), (name, stat)
    duration = per["last"].max() - arrival.min()
    assert summary["duration_s"] == pytest.approx(duration, rel=1e-12)
    assert summary["throughput_output_tok_s"] == pytest.approx(len(t) / duration, rel=1e-12)
