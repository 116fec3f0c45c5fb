"""Metrics against hand-computed values on tiny frames, and numpy's percentiles."""
import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testbed.metrics import (SLO, format_summary, inter_token_latencies, request_latencies, stats,
                             summarize, summary_tables, times_from_tokens)

NAN = math.nan


def requests_frame() -> pd.DataFrame:
    """Three finished requests (one with a single output token) and one rejected."""
    return pd.DataFrame({
        "request_id": ["r0", "r1", "r2", "r3"],
        "arrival_s": [0.0, 1.0, 2.0, 3.0],
        "first_scheduled_s": [0.5, 1.0, 2.5, NAN],
        "first_token_s": [1.0, 1.5, 4.0, NAN],
        "finish_s": [3.0, 1.5, 6.0, NAN],
        "n_output_tokens": [5, 1, 3, 0],
        "prompt_len": [10, 4, 20, 1000],
        "cached_prompt_tokens": [4, 0, 8, 0],
        "status": ["finished", "finished", "finished", "rejected"],
    })


def steps_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "seconds": [0.1, 0.2, 0.3], "n_seqs": [1, 2, 3], "n_batched_tokens": [10, 2, 3],
        "kv_blocks_used": [2, 6, 4], "kv_blocks_free": [6, 2, 4], "prefix_hit_tokens": [4, 0, 8],
        "n_preempted": [0, 1, 1], "n_swapped_out": [0, 0, 1], "n_swapped_in": [0, 0, 0],
    })


def tokens_frame() -> pd.DataFrame:
    rows = ([("r0", i, 1.0 + 0.5 * i) for i in range(5)] + [("r1", 0, 1.5)]
            + [("r2", i, 4.0 + i) for i in range(3)])
    frame = pd.DataFrame(rows, columns=["request_id", "index", "t"])
    return frame.sample(frac=1.0, random_state=0)  # order must not matter


def test_per_request_latencies_by_hand():
    r = requests_frame()
    got = {k: [request_latencies(*row, n)[k] for *row, n in zip(
        r.arrival_s, r.first_scheduled_s, r.first_token_s, r.finish_s, r.n_output_tokens)]
        for k in ("ttft", "tpot", "e2e", "queue", "norm_latency")}
    np.testing.assert_allclose(got["ttft"], [1.0, 0.5, 2.0, NAN])
    np.testing.assert_allclose(got["tpot"], [0.5, NAN, 1.0, NAN])  # 1-token output: NaN
    np.testing.assert_allclose(got["e2e"], [3.0, 0.5, 4.0, NAN])
    np.testing.assert_allclose(got["queue"], [0.5, 0.0, 0.5, NAN])
    np.testing.assert_allclose(got["norm_latency"], [0.6, 0.5, 4 / 3, NAN])


def test_request_latencies_accepts_missing_times():
    got = request_latencies(2.0, None, None, None, 0)
    assert all(math.isnan(v) for v in got.values())


def test_summary_by_hand():
    s = summarize(requests_frame(), steps_frame())
    assert (s["n_requests"], s["n_finished"], s["n_rejected"], s["n_aborted"]) == (4, 3, 1, 0)
    assert s["duration_s"] == pytest.approx(6.0)  # first arrival 0 to last finish 6
    assert s["offered_rate_req_s"] == pytest.approx(1.0)  # 3 gaps over 3 s
    assert s["throughput_req_s"] == pytest.approx(3 / 6)
    assert s["throughput_output_tok_s"] == pytest.approx(9 / 6)
    assert s["throughput_total_tok_s"] == pytest.approx((34 + 9) / 6)
    # TTFT [1, 0.5, 2]: numpy linear percentiles by hand: p90 at rank 1.8 -> 1 + 0.8 * 1
    assert s["ttft_mean_s"] == pytest.approx(3.5 / 3)
    assert s["ttft_median_s"] == pytest.approx(1.0)
    assert s["ttft_p90_s"] == pytest.approx(1.8)
    assert s["ttft_p99_s"] == pytest.approx(1.98)
    # TPOT leaves out the 1-token request: [0.5, 1.0]
    assert s["tpot_mean_s"] == pytest.approx(0.75)
    assert s["tpot_p90_s"] == pytest.approx(0.95)
    assert s["e2e_median_s"] == pytest.approx(3.0)
    assert s["queue_mean_s"] == pytest.approx(1 / 3)
    assert s["norm_latency_mean_s_per_tok"] == pytest.approx((0.6 + 0.5 + 4 / 3) / 3)
    assert s["itl_mean_s"] is None  # no token times given
    assert s["slo_attainment"] is None and s["goodput_req_s"] is None  # no SLO given
    assert s["prefix_hit_rate"] == pytest.approx(12 / 34)  # the rejected prompt is left out
    assert s["n_steps"] == 3
    assert s["step_mean_s"] == pytest.approx(0.2)
    assert s["batch_mean_seqs"] == pytest.approx(2.0)
    assert s["batch_mean_tokens"] == pytest.approx(5.0)
    assert s["kv_capacity_blocks"] == 8
    assert s["kv_used_mean_frac"] == pytest.approx(0.5)
    assert s["kv_used_peak_frac"] == pytest.approx(0.75)
    assert (s["preemptions"], s["swap_outs"], s["swap_ins"], s["prefix_hit_tokens"]) == (2, 1, 0, 12)


@pytest.mark.parametrize("slo, n_met", [
    (SLO(ttft_s=1.0), 2),  # r0 (exactly at the limit), r1; r2 too slow; r3 rejected
    (SLO(tpot_s=0.6), 2),  # r0, r1 (one token: no TPOT to violate); the rejected r3 misses
    (SLO(e2e_s=3.0), 2),
    (SLO(ttft_s=1.0, tpot_s=0.4), 1),  # every limit must hold: only r1
    (SLO(ttft_s=10.0, tpot_s=10.0, e2e_s=10.0), 3),  # rejected requests never meet an SLO
])
def test_attainment_and_goodput_count_rejected_as_missed(slo, n_met):
    s = summarize(requests_frame(), steps_frame(), slo=slo)
    assert s["slo_attainment"] == pytest.approx(n_met / 4)
    assert s["goodput_req_s"] == pytest.approx(n_met / 6)
    assert (s["slo_ttft_s"], s["slo_tpot_s"], s["slo_e2e_s"]) == (slo.ttft_s, slo.tpot_s, slo.e2e_s)


def test_slo_is_met_on_scalars():
    slo = SLO(ttft_s=1.0, tpot_s=0.1)
    assert bool(slo.is_met("finished", 0.5, NAN, 2.0))
    assert not bool(slo.is_met("finished", 0.5, 0.2, 2.0))
    assert not bool(slo.is_met("aborted", 0.5, 0.05, 2.0))


def test_slo_from_dict_names_unknown_fields():
    assert SLO.from_dict({"ttft_s": 2, "tpot_s": None}) == SLO(ttft_s=2.0)
    with pytest.raises(ValueError, match="ttft"):
        SLO.from_dict({"ttft": 2})


def test_itl_from_tokens_by_hand():
    gaps = np.sort(inter_token_latencies(tokens_frame()))
    np.testing.assert_allclose(gaps, [0.5] * 4 + [1.0] * 2)
    s = summarize(requests_frame(), steps_frame(), tokens_frame())
    assert s["itl_mean_s"] == pytest.approx(4 / 6)
    assert s["itl_p99_s"] == pytest.approx(1.0)
    assert s["itl_median_s"] == pytest.approx(0.5)


def test_itl_covers_finished_requests_only():
    requests = requests_frame()
    requests.loc[2, "status"] = "aborted"
    s = summarize(requests, steps_frame(), tokens_frame())
    assert s["itl_mean_s"] == pytest.approx(0.5)  # r2's 1 s gaps are left out


def test_times_from_tokens_equal_the_request_rows():
    got = times_from_tokens(tokens_frame()).set_index("request_id").sort_index()
    want = requests_frame().set_index("request_id").loc[["r0", "r1", "r2"]]
    np.testing.assert_allclose(got["first_token_s"], want["first_token_s"])
    np.testing.assert_allclose(got["finish_s"], want["finish_s"])
    np.testing.assert_array_equal(got["n_output_tokens"], want["n_output_tokens"])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 1e4, allow_nan=False), min_size=1, max_size=60))
def test_stats_are_numpys_linear_percentiles(values):
    got = stats(values + [NAN])  # NaNs are ignored
    v = np.array(values)
    assert got["mean"] == pytest.approx(v.mean())
    for name, q in (("median", 50), ("p90", 90), ("p99", 99)):
        assert got[name] == pytest.approx(np.percentile(v, q, method="linear"))


def test_summary_is_json_and_formats_every_number():
    s = summarize(requests_frame(), steps_frame(), tokens_frame(), SLO(ttft_s=1.0))
    assert json.loads(json.dumps(s, allow_nan=False)) == s
    text = format_summary(s)
    assert "1.8" in text and "0.95" in text and "0.5" in text
    latency = summary_tables(s)[1]
    assert latency.header == ("metric", "mean", "median", "p90", "p99")
    assert latency.rows[0] == ("TTFT (s)", "1.167", "1", "1.8", "1.98")
    widths = {len(line) for line in text.split("\n\n")[1].splitlines()[1:]}
    assert len(widths) == 1  # aligned columns


def test_summary_without_steps_or_finished_requests():
    requests = requests_frame().iloc[[3]]
    s = summarize(requests, steps_frame().iloc[:0])
    assert s["n_finished"] == 0 and s["throughput_req_s"] is None and s["n_steps"] == 0
    assert s["ttft_p99_s"] is None and s["kv_used_peak_frac"] is None
    assert "-" in format_summary(s)


def test_missing_columns_are_named():
    with pytest.raises(ValueError, match="finish_s"):
        summarize(requests_frame().drop(columns="finish_s"), steps_frame())
    with pytest.raises(ValueError, match="kv_blocks_free"):
        summarize(requests_frame(), steps_frame().drop(columns="kv_blocks_free"))
