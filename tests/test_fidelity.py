"""The fidelity experiment end to end on the tiny model and a few requests: the table has
every metric and its errors come from the two runs' Parquet logs."""
import json
import math

import numpy as np
import pytest

from experiments.fidelity import METRICS, compare_runs, run_fidelity, simulated_config
from replay_runs import config
from testbed.metrics import SLO
from testbed.replay.recorder import Recorder, read_run
from testbed.stack import build_stack

TINY = ("model=qwen2-tiny", "calibration=tiny", "engine.kv_memory_gb=0.01",
        "engine.host_kv_memory_gb=0", "trace.transforms.head=8", "progress=false",
        "report=false", "warmup=grid")


def fidelity_config(*overrides: str) -> dict:
    return config(*overrides, name="fidelity")


@pytest.fixture(scope="module")
def fidelity(tmp_path_factory):
    out = tmp_path_factory.mktemp("fidelity")
    return run_fidelity(fidelity_config(*TINY), out), out


def test_the_table_has_every_metric(fidelity):
    record, out = fidelity
    saved = json.loads((out / "fidelity.json").read_text())
    assert list(saved["metrics"]) == [key for key, _ in METRICS]
    for row in saved["metrics"].values():
        assert row["real"] > 0 and row["sim"] > 0 and math.isfinite(row["rel_error"])
        assert len(row["real_rerun_errors"]) == 1  # real_runs=2: the real engine against itself
    assert set(saved["targets"]) == {"ttft_median_s", "tpot_median_s", "throughput_req_s",
                                      "throughput_output_tok_s"}
    assert saved["steps"]["real"] > 0 and saved["steps"]["sim"] > 0


def test_errors_are_recomputed_from_the_parquet_logs(fidelity):
    record, out = fidelity
    real, sim = read_run(out / "real"), read_run(out / "sim")
    assert (real.requests["status"] == "finished").all() and len(real.requests) == 8
    assert sorted(real.requests["request_id"]) == sorted(sim.requests["request_id"])

    def ttft_p50(requests):
        return float(np.median(requests["first_token_s"] - requests["arrival_s"]))

    def output_rate(requests):
        return requests["n_output_tokens"].sum() / (requests["finish_s"].max() - requests["arrival_s"].min())

    for key, fn in (("ttft_median_s", ttft_p50), ("throughput_output_tok_s", output_rate)):
        r, s = fn(real.requests), fn(sim.requests)
        row = record["metrics"][key]
        assert row["real"] == pytest.approx(r) and row["sim"] == pytest.approx(s)
        assert row["rel_error"] == pytest.approx((s - r) / r)


def test_the_simulator_gets_as_many_kv_blocks_as_the_real_engine():
    cfg = fidelity_config(*TINY)
    real = build_stack(cfg)
    sim_cfg = simulated_config(cfg, "unused.json", real.info["dtype"])
    assert sim_cfg["engine"]["cost_model"] == "fitted"
    sim = build_stack({**sim_cfg, "engine": {**sim_cfg["engine"], "cost_model": "roofline"}})
    assert sim.info["kv_blocks"] == real.info["kv_blocks"]
    assert sim.info["dtype"] == real.info["dtype"] == "float32"


def write_run(run_dir, rows):
    """A run directory of finished requests (arrival, first token, finish, outputs)."""
    with Recorder(run_dir) as rec:
        rec.start({})
        for i, (arrival, first, finish, n) in enumerate(rows):
            rec.request({"request_id": f"r{i}", "arrival_s": arrival, "prompt_len": 10,
                         "output_len": n, "n_output_tokens": n, "cached_prompt_tokens": 0,
                         "first_scheduled_s": arrival, "first_token_s": first, "finish_s": finish,
                         "ttft": first - arrival, "tpot": (finish - first) / (n - 1),
                         "e2e": finish - arrival, "queue_s": 0.0, "n_preemptions": 0,
                         "status": "finished", "reason": "length", "slo_met": None, "priority": 0})
        rec.step({"step": 0, "t_start": 0.0, "t_end": 1.0, "seconds": 1.0, "host_seconds": 0.0,
                  "device_seconds": 1.0, "n_seqs": 1, "n_prefill_seqs": 0, "n_prefill_tokens": 0,
                  "n_decode_seqs": 1, "n_batched_tokens": 1, "sum_context": 1, "kv_blocks_used": 1,
                  "kv_blocks_free": 1, "prefix_hit_tokens": 0, "n_preempted": 0,
                  "n_swapped_out": 0, "n_swapped_in": 0, "n_waiting": 0, "n_running": 1,
                  "n_swapped": 0})


def test_compare_runs_by_hand(tmp_path):
    # TTFTs 1, 2, 3 against 1.5, 2, 3; TPOTs all 1 against all 2; duration 13 against 25.
    write_run(tmp_path / "real", [(0, 1, 5, 5), (1, 3, 7, 5), (2, 5, 13, 9)])
    write_run(tmp_path / "sim", [(0, 1.5, 9.5, 5), (1, 3, 11, 5), (2, 5, 25, 11)])
    rows = compare_runs(tmp_path / "real", tmp_path / "sim", SLO())
    assert rows["ttft_median_s"]["rel_error"] == pytest.approx(0.0)
    assert rows["ttft_mean_s"]["rel_error"] == pytest.approx((6.5 / 3 - 2) / 2)
    assert rows["tpot_median_s"]["rel_error"] == pytest.approx(1.0)
    assert rows["throughput_req_s"]["rel_error"] == pytest.approx(13 / 25 - 1)
    assert rows["throughput_output_tok_s"]["rel_error"] == pytest.approx((21 / 25) / (19 / 13) - 1)
