"""The Parquet recorder: part files, crash safety, run status, stable dtypes, bad rows."""
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from testbed.replay.recorder import REQUEST_SCHEMA, STEP_SCHEMA, Recorder, read_run

REPO = Path(__file__).resolve().parents[1]


def step_row(i: int, **extra) -> dict:
    row = {name: 0 for name in STEP_SCHEMA}
    row.update(step=i, t_start=0.1 * i, t_end=0.1 * i + 0.05, seconds=0.05, host_seconds=None,
               device_seconds=math.nan, n_seqs=i % 4, kv_blocks_used=i, kv_blocks_free=100 - i)
    row.update(extra)
    return row


def request_row(i: int, status: str = "finished", **extra) -> dict:
    row = {"request_id": f"r{i}", "arrival_s": float(i), "prompt_len": 10 + i, "output_len": 5,
           "n_output_tokens": 5, "cached_prompt_tokens": 0, "first_scheduled_s": i + 0.1,
           "first_token_s": i + 0.2, "finish_s": i + 1.0, "ttft": 0.2, "tpot": 0.2, "e2e": 1.0,
           "queue_s": 0.1, "n_preemptions": 0, "status": status, "reason": "length",
           "slo_met": True, "priority": 0}
    if status == "rejected":
        row.update(n_output_tokens=0, first_scheduled_s=None, first_token_s=None, finish_s=None,
                   ttft=math.nan, tpot=math.nan, e2e=math.nan, queue_s=math.nan, slo_met=False,
                   reason="too long")
    row.update(extra)
    return row


def parts(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_a_part_file_every_n_rows(tmp_path):
    rec = Recorder(tmp_path, flush_every=3)
    rec.start({"engine": "sim"})
    for i in range(7):
        rec.step(step_row(i))
    assert parts(tmp_path / "steps.parquet") == ["part-000000.parquet", "part-000001.parquet"]
    assert not (tmp_path / "requests.parquet").exists()  # nothing to write yet
    rec.request(request_row(0))
    rec.close()
    assert len(parts(tmp_path / "steps.parquet")) == 3
    steps, requests, tokens, meta = read_run(tmp_path)
    assert list(steps["step"]) == list(range(7))
    assert list(steps.columns) == list(STEP_SCHEMA)
    assert requests["request_id"].tolist() == ["r0"] and tokens is None
    assert meta["status"] == "complete" and meta["engine"] == "sim"


def test_close_writes_summary_counts_and_versions(tmp_path):
    with Recorder(tmp_path, tokens=True, flush_every=100) as rec:
        rec.start({"model": {"name": "qwen2-tiny"}})
        assert json.loads((tmp_path / "run.json").read_text())["status"] == "running"
        rec.step(step_row(0))
        rec.request(request_row(0))
        rec.request(request_row(1, status="rejected"))
        rec.request(request_row(2, status="aborted", n_output_tokens=2))
        for i in range(5):
            rec.token("r0", i, 0.2 + i)
        rec.close(summary={"ttft_p99_s": 0.2, "itl_mean_s": math.nan})
    meta = json.loads((tmp_path / "run.json").read_text())
    assert meta["status"] == "complete" and meta["end_time"] >= meta["start_time"]
    assert meta["counts"] == {"requests": 3, "requests_finished": 1, "requests_rejected": 1,
                              "requests_aborted": 1, "steps": 1, "output_tokens": 7}
    assert set(meta["versions"]) >= {"python", "mlx", "testbed", "git_commit"}
    assert meta["model"] == {"name": "qwen2-tiny"} and "blas" in meta and "device" in meta
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == {"ttft_p99_s": 0.2, "itl_mean_s": None}  # NaN -> null: strict JSON
    _, requests, tokens, _ = read_run(tmp_path)
    assert requests["status"].tolist() == ["finished", "rejected", "aborted"]
    assert math.isnan(requests["first_token_s"][1])  # None time -> NaN
    assert tokens["t"].tolist() == [0.2, 1.2, 2.2, 3.2, 4.2]


def test_tables_with_no_rows_are_still_readable(tmp_path):
    with Recorder(tmp_path, tokens=True) as rec:
        rec.start({})
    steps, requests, tokens, meta = read_run(tmp_path)
    assert len(steps) == len(requests) == len(tokens) == 0
    assert list(requests.columns) == list(REQUEST_SCHEMA)
    assert meta["status"] == "complete"


def test_dtypes_are_stable_across_parts(tmp_path):
    rec = Recorder(tmp_path, flush_every=2)
    rec.start({})
    # an extra feature that is integral, then fractional, then missing in a whole part
    features = [3, 4, 0.5, 1.5, math.nan, None]
    for i, f in enumerate(features):
        rec.step(step_row(i, sum_prefill_sq=f, t_start=None if i < 2 else 0.1 * i))
    # slo_met: unknown (no SLO) in one whole part, booleans in the next
    rec.request(request_row(0, slo_met=None))
    rec.request(request_row(1, slo_met=None))
    rec.request(request_row(2, status="rejected"))
    rec.request(request_row(3))
    rec.close()
    for table in ("steps", "requests"):
        schemas = {str(pq.read_schema(p)) for p in (tmp_path / f"{table}.parquet").iterdir()}
        assert len(schemas) == 1, table
        pd.read_parquet(tmp_path / f"{table}.parquet")  # pyarrow's own directory reading works
    steps, requests, _, _ = read_run(tmp_path)
    assert steps["sum_prefill_sq"].dtype == "float64" and steps["t_start"].dtype == "float64"
    assert steps["sum_prefill_sq"].tolist()[:4] == [3.0, 4.0, 0.5, 1.5]
    assert steps["sum_prefill_sq"].isna().tolist()[4:] == [True, True]
    assert steps["t_start"].isna().tolist() == [True, True, False, False, False, False]
    assert requests["slo_met"].dtype == "boolean"
    assert requests["slo_met"].isna().tolist() == [True, True, False, False]
    assert requests["slo_met"].tolist()[2:] == [False, True]


WRITER = textwrap.dedent("""
    import json, sys, time
    import testbed
    from testbed.replay.recorder import Recorder
    run_dir, step_columns, request_row = sys.argv[1], *map(json.loads, sys.argv[2:])
    rec = Recorder(run_dir, tokens=True, flush_every=10)
    rec.start({"engine": "sim"})
    i = 0
    while True:
        rec.step({**dict.fromkeys(step_columns, 0), "step": i, "t_end": 0.5 * i, "feature": 1.0 * i})
        rec.token("r0", i, 0.5 * i)
        rec.request({**request_row, "request_id": f"r{i}"})
        i += 1
        time.sleep(0.002)
""")


def test_a_killed_run_leaves_readable_tables(tmp_path):
    args = [str(tmp_path), json.dumps(list(STEP_SCHEMA)), json.dumps(request_row(0))]
    proc = subprocess.Popen([sys.executable, "-c", WRITER, *args], cwd=REPO, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        tables = [tmp_path / f"{name}.parquet" for name in ("steps", "requests", "tokens")]
        # Each flush writes the tables one after another: wait until all three have 3 parts.
        while not all(t.is_dir() and len(list(t.glob("part-*"))) >= 3 for t in tables):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the writer wrote no parts"
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    steps, requests, tokens, meta = read_run(tmp_path)
    assert meta["status"] == "running"  # it never got to say otherwise
    assert len(steps) >= 30 and len(steps) % 10 == 0
    assert steps["step"].tolist() == list(range(len(steps)))
    assert steps["feature"].tolist() == [float(i) for i in range(len(steps))]
    assert len(requests) % 10 == 0 and len(tokens) % 10 == 0 and len(tokens) >= 30
    pd.read_parquet(tmp_path / "tokens.parquet")


def test_fail_records_the_reason_and_what_was_written(tmp_path):
    rec = Recorder(tmp_path, flush_every=100)
    rec.start({})
    rec.step(step_row(0))
    rec.fail("out of memory")
    steps, _, _, meta = read_run(tmp_path)
    assert meta["status"] == "failed: out of memory" and len(steps) == 1
    with pytest.raises(ValueError, match="closed"):
        rec.step(step_row(1))


def test_context_manager_fails_the_run_and_reraises(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with Recorder(tmp_path / "a") as rec:
            rec.start({})
            rec.step(step_row(0))
            raise RuntimeError("boom")
    assert read_run(tmp_path / "a").meta["status"] == "failed: RuntimeError: boom"
    assert len(read_run(tmp_path / "a").steps) == 1
    with pytest.raises(KeyboardInterrupt):
        with Recorder(tmp_path / "b") as rec:
            rec.start({})
            raise KeyboardInterrupt
    assert read_run(tmp_path / "b").meta["status"] == "failed: interrupted"


def test_fail_survives_a_bad_buffered_row(tmp_path):
    rec = Recorder(tmp_path)
    rec.start({})
    rec.step(step_row(0, n_seqs="three"))
    rec.request(request_row(0))
    rec.fail("crashed")
    run = read_run(tmp_path)
    assert run.meta["status"].startswith("failed: crashed; and could not flush: steps.parquet")
    assert len(run.requests) == 1  # the other tables are still saved


def test_close_with_a_bad_row_marks_the_run_failed(tmp_path):
    rec = Recorder(tmp_path)
    rec.start({})
    rec.step(step_row(0, n_seqs="three"))
    with pytest.raises(ValueError, match="n_seqs"):
        rec.close(summary={"x": 1})
    assert read_run(tmp_path).meta["status"].startswith("failed: could not write the tables")
    assert not (tmp_path / "summary.json").exists()


def test_bad_rows_are_named(tmp_path):
    rec = Recorder(tmp_path, tokens=False, flush_every=1)
    rec.start({})
    row = step_row(0)
    del row["kv_blocks_free"]
    with pytest.raises(ValueError, match="kv_blocks_free"):
        rec.step(row)
    with pytest.raises(ValueError, match="n_seqs.*int64"):
        rec.step(step_row(0, n_seqs="three"))
    with pytest.raises(ValueError, match=r"steps.parquet row 0: field 'n_running' is None"):
        Recorder(tmp_path / "x", flush_every=1).step(step_row(0, n_running=None))
    rec2 = Recorder(tmp_path / "y")
    rec2.step(step_row(0, feature=1.0))
    with pytest.raises(ValueError, match=r"row 1 .*missing \['feature'\]"):
        rec2.step(step_row(1))
    with pytest.raises(ValueError, match="extra field 'note' must be a number or a string"):
        Recorder(tmp_path / "z").step(step_row(0, note=[1]))
    with pytest.raises(ValueError, match="unknown field.*'colour'"):
        rec.request(request_row(0, colour="red"))
    with pytest.raises(ValueError, match="status 'done'"):
        rec.request(request_row(0, status="done"))
    with pytest.raises(ValueError, match="tokens=False"):
        rec.token("r0", 0, 1.0)
    with pytest.raises(ValueError, match="flush_every"):
        Recorder(tmp_path, flush_every=0)


def test_read_run_needs_a_run_dir(tmp_path):
    with pytest.raises(ValueError, match="no run.json"):
        read_run(tmp_path)


def test_request_row_from_a_sequence(tmp_path):
    from testbed.metrics import SLO
    from testbed.replay.recorder import request_row
    from testbed.request import Request, SeqStatus, Sequence

    seq = Sequence(0, Request("a", arrival_s=1.0, prompt_len=32, output_len=3, priority=2))
    with pytest.raises(ValueError, match="'a' is still waiting"):
        request_row(seq)
    seq.status, seq.reason, seq.output_token_ids = SeqStatus.FINISHED, "length", [5, 6, 7]
    seq.num_cached_tokens, seq.num_preemptions = 16, 1
    seq.first_scheduled_s, seq.first_token_s, seq.finish_s = 1.5, 2.0, 3.0
    row = request_row(seq, SLO(ttft_s=1.0, tpot_s=0.4))
    assert set(row) == set(REQUEST_SCHEMA)
    assert (row["ttft"], row["tpot"], row["e2e"], row["queue_s"]) == (1.0, 0.5, 2.0, 0.5)
    assert row["slo_met"] is False  # TPOT 0.5 > 0.4
    assert (row["priority"], row["n_output_tokens"], row["cached_prompt_tokens"]) == (2, 3, 16)
    assert request_row(seq)["slo_met"] is None
    rejected = Sequence(1, Request("b", 2.0, 10_000, 8), status=SeqStatus.REJECTED, reason="too long")
    with Recorder(tmp_path) as rec:
        rec.request(request_row(seq))
        rec.request(request_row(rejected, SLO(e2e_s=5.0)))
    requests = read_run(tmp_path).requests
    assert requests["status"].tolist() == ["finished", "rejected"]
    assert requests["slo_met"].isna().tolist() == [True, False]
    assert math.isnan(requests["ttft"][1]) and requests["reason"][1] == "too long"
