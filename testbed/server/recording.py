"""Record served traffic as a replayable trace plus the logs of a replay run.

`--record DIR` writes:
- `trace.jsonl`: one line per served request, in arrival order: `request_id`, `arrival_s`
  (seconds since the server started), `prompt_len`, `output_len` (tokens the engine actually
  generated), `prompt_token_ids` and, with `record_text`, `prompt_text`. The `generic` trace
  reader loads it as is (`conf/trace/recorded.yaml`: `trace=recorded
  trace.path=DIR/trace.jsonl` replays it). A request that generated no token
  (aborted while queued, or rejected) cannot be a trace row (output lengths are positive):
  it is counted in run.json under `trace.requests_without_output` and kept in requests.parquet.
- `steps.parquet/`, `requests.parquet/`, `tokens.parquet/`, `run.json`, `summary.json`:
  the same tables as a replay run, through `Recorder`.

Requests end out of order, so trace rows wait in arrival order until every earlier request
has ended. Each line is written whole and flushed.
"""
from __future__ import annotations

import json
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from testbed.engine.engine import Engine, StepOutput
from testbed.metrics import SLO, summarize
from testbed.replay.driver import step_row
from testbed.replay.recorder import Recorder, read_run, request_row
from testbed.request import Request, Sequence

TRACE_FILE = "trace.jsonl"
_OPEN = object()  # a request that has not ended yet


class TrafficRecorder:
    """A LoopObserver that records into `run_dir`. `start(meta)` first, `close()` last."""

    def __init__(self, run_dir: str | Path, *, record_text: bool = False, tokens: bool = True,
                 slo: SLO | None = None, flush_every: int = 5000, flush_interval_s: float = 5.0):
        self.run_dir = Path(run_dir)
        self.record_text = record_text
        self.slo = slo
        self.flush_interval_s = flush_interval_s
        self.recorder = Recorder(self.run_dir, tokens=tokens, flush_every=flush_every)
        self._pending: OrderedDict[str, object] = OrderedDict()  # arrival order -> row | None | _OPEN
        self._trace = None
        self._rows = 0
        self._without_output = 0
        self._last_flush = time.monotonic()

    def start(self, meta: dict[str, Any]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.recorder.start({**meta, "trace_file": TRACE_FILE})
        self._trace = open(self.run_dir / TRACE_FILE, "w", encoding="utf-8")

    # ---- LoopObserver ----
    def arrived(self, request: Request) -> None:
        self._pending[request.request_id] = _OPEN

    def stepped(self, out: StepOutput, engine: Engine) -> None:
        self.recorder.step(step_row(out))

    def ended(self, seq: Sequence) -> None:
        self.recorder.request(request_row(seq, self.slo))
        if self.recorder.tokens is not None:
            for i, t in enumerate(seq.token_times):
                self.recorder.token(seq.request.request_id, i, t)
        self._pending[seq.request.request_id] = self._trace_row(seq)
        self._write_ready()

    # ---- flushing ----
    def flush_if_due(self) -> None:
        """Write the buffered table rows if the last flush is `flush_interval_s` ago."""
        if time.monotonic() - self._last_flush >= self.flush_interval_s:
            self.recorder.flush()
            self._last_flush = time.monotonic()

    def close(self, error: BaseException | None = None) -> None:
        """Write everything; mark the run complete (with a summary) or failed."""
        self._write_ready()
        unended = len(self._pending)
        self._trace.close()
        self.recorder.meta["trace"] = {"file": TRACE_FILE, "rows": self._rows,
                                       "requests_without_output": self._without_output,
                                       "requests_not_ended": unended}
        if error is not None:
            self.recorder.fail(f"{type(error).__name__}: {error}")
            return
        self.recorder.flush()
        data = read_run(self.run_dir)
        self.recorder.close(summary=summarize(data.requests, data.steps, data.tokens, self.slo))

    def _trace_row(self, seq: Sequence) -> dict | None:
        req = seq.request
        if seq.num_output_tokens == 0:
            self._without_output += 1
            return None
        row = {"request_id": req.request_id, "arrival_s": req.arrival_s,
               "prompt_len": req.prompt_len, "output_len": seq.num_output_tokens,
               "prompt_token_ids": list(req.prompt_token_ids)}
        if self.record_text:
            if req.prompt_text is None:
                raise ValueError(f"request {req.request_id!r}: recording text, but it has no "
                                 "prompt_text")
            row["prompt_text"] = req.prompt_text
        return row

    def _write_ready(self) -> None:
        """Write the trace rows of the oldest requests, up to the first still running."""
        while self._pending:
            row = next(iter(self._pending.values()))
            if row is _OPEN:
                break
            self._pending.popitem(last=False)
            if row is not None:
                self._trace.write(json.dumps(row) + "\n")
                self._rows += 1
        self._trace.flush()
