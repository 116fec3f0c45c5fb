"""The replay's quick recording path writes what the row-by-row one does: requests rows whose
latencies are computed together when written (`Recorder.ended`) equal `request_row`'s, with
and without an SLO, for finished and rejected requests, 1-token outputs and times never
reached, across part files and after a failure."""
from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

from testbed.metrics import SLO
from testbed.replay.recorder import Recorder, read_run, request_row
from testbed.request import Request, Sequence, SeqStatus


def ended(i: int, outputs: int, status: SeqStatus = SeqStatus.FINISHED) -> Sequence:
    seq = Sequence(i, Request(f"r{i}", 0.5 * i, 10 + i, max(outputs, 1), priority=i % 2))
    seq.status, seq.reason = status, "length" if status is SeqStatus.FINISHED else "too long"
    if status is SeqStatus.FINISHED:
        seq.first_scheduled_s = 0.5 * i + 0.1
        seq.first_token_s = 0.5 * i + 0.2 + 0.01 * i
        seq.output_token_ids = [0] * outputs
        seq.finish_s = seq.first_token_s + 0.03 * (outputs - 1) * (1 + i % 3)
    seq.finish_s = seq.finish_s if seq.finish_s is not None else 0.5 * i
    return seq


SEQS = [ended(0, 1), ended(1, 5), ended(2, 9), ended(3, 0, SeqStatus.REJECTED), ended(4, 30),
        ended(5, 2), ended(6, 14)]


@pytest.mark.parametrize("slo", [None, SLO(), SLO(ttft_s=0.25, tpot_s=0.05)])
def test_rows_written_together_equal_request_row(tmp_path, slo):
    extra = {"replica": pa.int64()}
    with Recorder(tmp_path / "one", flush_every=3, request_columns=extra) as rec:
        rec.start({})
        for seq in SEQS:
            rec.request({**request_row(seq, slo), "replica": seq.seq_id % 2})
    with Recorder(tmp_path / "together", flush_every=3, request_columns=extra) as rec:
        rec.start({})
        for seq in SEQS:
            rec.ended(seq, slo, replica=seq.seq_id % 2)
        assert rec.counts()["requests_rejected"] == 1
    one, together = read_run(tmp_path / "one"), read_run(tmp_path / "together")
    pd.testing.assert_frame_equal(one.requests, together.requests, check_exact=True)
    assert together.requests["tpot"].isna().sum() == 2  # a 1-token output and a rejection
    if slo is not None and slo.limits:
        assert 0 < together.requests["slo_met"].sum() < len(SEQS)


def test_rows_written_together_survive_a_failure(tmp_path):
    rec = Recorder(tmp_path, flush_every=100)
    rec.start({})
    for seq in SEQS[:4]:
        rec.ended(seq)
    rec.fail("crashed")
    rows = read_run(tmp_path).requests
    assert list(rows["request_id"]) == ["r0", "r1", "r2", "r3"]
    assert rows["e2e"].tolist() == [request_row(s)["e2e"] for s in SEQS[:4]]
