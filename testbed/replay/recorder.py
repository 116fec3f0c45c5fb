"""Crash-safe recording of one run: Parquet part files plus run.json and summary.json.

A Parquet file is unreadable until its footer is written, so a run killed mid-write would
lose everything in it. The recorder instead buffers rows and, every `flush_every` rows of a
table (and at the end), writes them as a new part file into a `<table>.parquet/` directory:
first under a hidden temporary name, then renamed with `os.replace`, which is atomic. A killed
run thus leaves whole part files (and at most a hidden temporary one, which readers skip);
pandas and pyarrow read such a directory as one table.

Each table has a fixed Arrow schema, so part files always concatenate: the documented columns
have fixed types, and extra columns (the cost-model features of a step) are fixed by the
first row: numbers become float64, strings stay strings. Every row of a table must have the
same keys as its first row.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import subprocess
from collections import Counter
from itertools import repeat
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from testbed.metrics import SLO, latencies, request_latencies
from testbed.request import Sequence

_I, _F, _S = pa.int64(), pa.float64(), pa.string()

STEP_SCHEMA = {
    "step": _I, "t_start": _F, "t_end": _F, "seconds": _F, "host_seconds": _F,
    "device_seconds": _F, "n_seqs": _I, "n_prefill_seqs": _I, "n_prefill_tokens": _I,
    "n_decode_seqs": _I, "n_batched_tokens": _I, "sum_context": _I, "kv_blocks_used": _I,
    "kv_blocks_free": _I, "prefix_hit_tokens": _I, "n_preempted": _I, "n_swapped_out": _I,
    "n_swapped_in": _I, "n_waiting": _I, "n_running": _I, "n_swapped": _I,
}
REQUEST_SCHEMA = {
    "request_id": _S, "arrival_s": _F, "prompt_len": _I, "output_len": _I,
    "n_output_tokens": _I, "cached_prompt_tokens": _I, "first_scheduled_s": _F,
    "first_token_s": _F, "finish_s": _F, "ttft": _F, "tpot": _F, "e2e": _F, "queue_s": _F,
    "n_preemptions": _I, "status": _S, "reason": _S, "slo_met": pa.bool_(), "priority": _I,
}
TOKEN_SCHEMA = {"request_id": _S, "index": _I, "t": _F}

REQUEST_STATUSES = ("finished", "rejected", "aborted")
NULLABLE = (pa.float64(), pa.bool_())  # floats: a missing time; slo_met: no SLO given


class _Table:
    """The buffered rows of one Parquet directory, a list of values per column, and how to
    write them."""

    def __init__(self, directory: Path, schema: dict[str, pa.DataType], *, extras: bool):
        self.directory = directory
        self.known = schema
        self.extras = extras  # whether columns beyond `known` may appear
        self.schema: pa.Schema | None = None  # fixed by the first row
        self.names: frozenset[str] = frozenset()
        self.columns: dict[str, list[Any]] = {}  # buffered values, by column
        self.n_buffered = 0
        self.n_rows = 0
        self.n_parts = 0

    def add(self, row: dict[str, Any]) -> None:
        self._check_keys(row)
        for name, column in self.columns.items():
            column.append(row[name])
        self.n_buffered += 1
        self.n_rows += 1

    def add_columns(self, columns: dict[str, Any], num_rows: int) -> None:
        """`num_rows` rows given by column: a list or numpy array of `num_rows` values, or one
        value (a number or a string) for every row."""
        if num_rows < 1:
            return
        for name, v in columns.items():
            if isinstance(v, (list, np.ndarray)) and len(v) != num_rows:
                raise ValueError(f"{self._where(self.n_rows)}: column {name!r} has {len(v)} "
                                 f"values for {num_rows} rows")
        if self.schema is None or columns.keys() != self.names:
            self._check_keys({name: v[0] if isinstance(v, (list, np.ndarray)) else v
                              for name, v in columns.items()})
        for name, column in self.columns.items():
            v = columns[name]
            if type(v) is list:
                column.extend(v)
            elif isinstance(v, np.ndarray):
                column.extend(v.tolist())
            else:
                column.extend(repeat(v, num_rows))
        self.n_buffered += num_rows
        self.n_rows += num_rows

    def flush(self) -> None:
        if not self.n_buffered:
            return
        self._write(pa.table({f.name: self._column(f, self.columns[f.name]) for f in self.schema},
                             schema=self.schema))
        for column in self.columns.values():
            column.clear()
        self.n_buffered = 0

    def write_empty_if_none(self) -> None:
        """Leave a readable (empty) table behind when no row ever came."""
        if self.n_parts == 0:
            self.schema = self.schema or pa.schema(list(self.known.items()))
            self._write(self.schema.empty_table())

    def _write(self, table: pa.Table) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"part-{self.n_parts:06d}.parquet"
        tmp = self.directory / f".{name}.tmp"
        # Dictionaries pay off for strings (statuses, reasons, ids), not for numbers.
        strings = [f.name for f in table.schema if pa.types.is_string(f.type)]
        pq.write_table(table, tmp, use_dictionary=strings)
        os.replace(tmp, self.directory / name)
        self.n_parts += 1

    def _schema_from(self, row: dict[str, Any]) -> pa.Schema:
        missing = [name for name in self.known if name not in row]
        if missing:
            raise ValueError(f"{self._where(0)} lacks field(s) {missing}")
        extra = [name for name in row if name not in self.known]
        if extra and not self.extras:
            raise ValueError(f"{self._where(0)} has unknown field(s) {extra}; "
                             f"known: {list(self.known)}")
        return pa.schema([*self.known.items(), *((n, self._extra_type(n, row[n])) for n in extra)])

    def _extra_type(self, name: str, value: Any) -> pa.DataType:
        if isinstance(value, str):
            return pa.string()
        if isinstance(value, (int, float, np.integer, np.floating)):
            return pa.float64()
        raise ValueError(f"{self._where(0)}: extra field {name!r} must be a number or a string, "
                         f"got {type(value).__name__}")

    def _check_keys(self, row: dict[str, Any]) -> None:
        """The first row fixes the schema; every later one must have the same keys."""
        if self.schema is None:
            self.schema = self._schema_from(row)
            self.names = frozenset(self.schema.names)
            self.columns = {name: [] for name in self.schema.names}
        elif row.keys() != self.names:
            raise ValueError(f"{self._where(self.n_rows)} has other fields than the first row: "
                             f"missing {sorted(self.names - set(row))}, "
                             f"extra {sorted(set(row) - self.names)}")

    def _column(self, field: pa.Field, values: list[Any]) -> pa.Array:
        try:
            array = pa.array(values, type=field.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
            raise ValueError(f"{self.directory.name}: field {field.name!r} must be {field.type} "
                             f"in every row: {e}") from None
        if array.null_count and field.type not in NULLABLE:
            first = next(i for i, v in enumerate(values) if v is None)
            raise ValueError(f"{self._where(self.n_rows - len(values) + first)}: "
                             f"field {field.name!r} is None")
        return array

    def _where(self, index: int) -> str:
        return f"{self.directory.name} row {index}"


class _RequestTable(_Table):
    """The requests table. Rows of ended sequences may come without their latencies
    (`Recorder.ended`): those are computed for all such rows at once before the rows are
    written, with `testbed.metrics` on arrays (as `request_row` does for one row)."""

    def __init__(self, directory: Path, schema: dict[str, pa.DataType]):
        super().__init__(directory, schema, extras=False)
        self._incomplete: list[tuple[int, SLO | None]] = []  # (buffered row, its SLO)

    def add_ended(self, row: dict[str, Any], slo: SLO | None) -> None:
        self.add(row)
        self._incomplete.append((self.n_buffered - 1, slo))

    def flush(self) -> None:
        if self._incomplete:
            self._complete()
        super().flush()

    def _complete(self) -> None:
        columns, rows = self.columns, [i for i, _ in self._incomplete]

        def values(name: str) -> np.ndarray:  # None (a time never reached) becomes NaN
            column = columns[name]
            return np.array([column[i] for i in rows], dtype=float)

        lat = latencies(values("arrival_s"), values("first_scheduled_s"), values("first_token_s"),
                        values("finish_s"), values("n_output_tokens"))
        for name, key in _LATENCY_COLUMNS:
            column = columns[name]
            for i, v in zip(rows, lat[key].tolist()):
                column[i] = v
        status = [columns["status"][i] for i in rows]
        met = columns["slo_met"]
        for slo in {id(slo): slo for _, slo in self._incomplete if slo is not None and slo.limits}.values():
            ok = slo.is_met(status, lat["ttft"], lat["tpot"], lat["e2e"]).tolist()
            for j, (i, row_slo) in enumerate(self._incomplete):
                if row_slo is slo:
                    met[i] = ok[j]
        self._incomplete.clear()


_LATENCY_COLUMNS = (("ttft", "ttft"), ("tpot", "tpot"), ("e2e", "e2e"), ("queue_s", "queue"))


def request_row(seq: Sequence, slo: SLO | None = None) -> dict[str, Any]:
    """The requests.parquet row of a finished, rejected or aborted sequence.

    Latencies and `slo_met` come from `testbed.metrics`; `slo_met` is None without an SLO.
    """
    row = _request_fields(seq)
    lat = request_latencies(row["arrival_s"], row["first_scheduled_s"], row["first_token_s"],
                            row["finish_s"], row["n_output_tokens"])
    for name, key in _LATENCY_COLUMNS:
        row[name] = lat[key]
    if slo is not None and slo.limits:
        row["slo_met"] = bool(slo.is_met(row["status"], lat["ttft"], lat["tpot"], lat["e2e"]))
    return row


def _request_fields(seq: Sequence) -> dict[str, Any]:
    """`request_row` with its latencies and `slo_met` left None."""
    if not seq.status.is_done:
        raise ValueError(f"request {seq.request.request_id!r} is still {seq.status.value}")
    req = seq.request
    return {
        "request_id": req.request_id, "arrival_s": req.arrival_s, "prompt_len": req.prompt_len,
        "output_len": req.output_len, "n_output_tokens": seq.num_output_tokens,
        "cached_prompt_tokens": seq.num_cached_tokens, "first_scheduled_s": seq.first_scheduled_s,
        "first_token_s": seq.first_token_s, "finish_s": seq.finish_s, "ttft": None,
        "tpot": None, "e2e": None, "queue_s": None,
        "n_preemptions": seq.num_preemptions, "status": seq.status.value, "reason": seq.reason,
        "slo_met": None, "priority": req.priority,
    }


class Recorder:
    """Writes one run's steps, requests and (optionally) tokens into `run_dir`.
    `step_columns` / `request_columns` add typed columns that every row of that table has
    (e.g. a cluster's `replica`).

    `start(meta)`, then `step(row)` / `request(row)` / `token(...)` as the run goes, then
    `close(summary=...)` or `fail(reason)`. As a context manager it fails the run on any
    exception (KeyboardInterrupt included) and re-raises, and closes it as complete on a
    normal exit if `close` was not called.
    """

    def __init__(self, run_dir: str | os.PathLike, *, tokens: bool = False, flush_every: int = 5000,
                 step_columns: dict[str, pa.DataType] | None = None,
                 request_columns: dict[str, pa.DataType] | None = None):
        if flush_every < 1:
            raise ValueError(f"flush_every must be >= 1, got {flush_every}")
        self.run_dir = Path(run_dir)
        self.flush_every = flush_every
        self.steps = _Table(self.run_dir / "steps.parquet", {**STEP_SCHEMA, **(step_columns or {})},
                            extras=True)
        self.requests = _RequestTable(self.run_dir / "requests.parquet",
                                      {**REQUEST_SCHEMA, **(request_columns or {})})
        self.tokens = (_Table(self.run_dir / "tokens.parquet", TOKEN_SCHEMA, extras=False)
                       if tokens else None)
        self.meta: dict[str, Any] = {}
        self.status_counts: Counter[str] = Counter()
        self.output_tokens = 0
        self.closed = False

    # ---- writing ----
    def start(self, meta: dict[str, Any]) -> None:
        """Write run.json: `run_environment()`, then `meta` (which wins), status "running"."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.meta = {**run_environment(), **meta, "status": "running", "start_time": _now()}
        _write_json(self.run_dir / "run.json", self.meta)

    def step(self, row: dict[str, Any]) -> None:
        self._add(self.steps, row)

    def step_batch(self, columns: dict[str, Any], num_rows: int) -> None:
        """`num_rows` steps at once, by column (the keys of a `step` row): each a list or
        numpy array of `num_rows` values, or one value for all of them."""
        self._check_open()
        self.steps.add_columns(columns, num_rows)
        self._flush_if_full(self.steps)

    def request(self, row: dict[str, Any]) -> None:
        self._check_status(row)
        self._add(self.requests, row)
        self._count_request(row)

    def ended(self, seq: Sequence, slo: SLO | None = None, **columns: Any) -> None:
        """The row `request(request_row(seq, slo) | columns)` writes, its latencies computed
        together with those of the other rows written at the same time (quicker)."""
        row = _request_fields(seq) | columns
        self._check_open()
        self.requests.add_ended(row, slo)
        self._count_request(row)
        self._flush_if_full(self.requests)

    def _check_status(self, row: dict[str, Any]) -> None:
        status = row.get("status")
        if status not in REQUEST_STATUSES:
            raise ValueError(f"requests row {self.requests.n_rows}: status {status!r} is not one "
                             f"of {REQUEST_STATUSES}")

    def _count_request(self, row: dict[str, Any]) -> None:
        self.status_counts[row["status"]] += 1
        self.output_tokens += int(row.get("n_output_tokens") or 0)

    def token(self, request_id: str, index: int, t: float) -> None:
        if self.tokens is None:
            raise ValueError("this Recorder was made with tokens=False")
        self._add(self.tokens, {"request_id": request_id, "index": index, "t": t})

    def request_tokens(self, request_id: str, times: list[float]) -> None:
        """Every output token of a request: token i came at `times[i]`."""
        if self.tokens is None:
            raise ValueError("this Recorder was made with tokens=False")
        self._check_open()
        self.tokens.add_columns({"request_id": request_id, "index": list(range(len(times))),
                                 "t": list(times)}, len(times))
        self._flush_if_full(self.tokens)

    def flush(self) -> None:
        """Write every buffered row as new part files."""
        for table in self._tables():
            table.flush()

    def close(self, status: str = "complete", summary: dict[str, Any] | None = None) -> None:
        """Flush, write summary.json (if given) and the final run.json."""
        self._check_open()
        try:
            self.flush()
            for table in self._tables():
                table.write_empty_if_none()
        except (ValueError, OSError) as e:
            self._finish(f"failed: could not write the tables: {e}")
            raise
        if summary is not None:
            _write_json(self.run_dir / "summary.json", summary)
        self._finish(status)

    def fail(self, reason: str) -> None:
        """Save what there is and mark the run `failed: <reason>`."""
        self._check_open()
        problems = []
        for table in self._tables():
            try:
                table.flush()
            except (ValueError, OSError) as e:  # must not hide the failure being recorded
                problems.append(str(e))
        if problems:
            reason += "; and could not flush: " + "; ".join(problems)
        self._finish(f"failed: {reason}")

    def counts(self) -> dict[str, int]:
        """Rows seen so far: requests by status, steps, output tokens."""
        return {"requests": self.requests.n_rows,
                **{f"requests_{s}": self.status_counts[s] for s in REQUEST_STATUSES},
                "steps": self.steps.n_rows, "output_tokens": self.output_tokens}

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.closed:
            return False
        if exc_type is None:
            self.close()
        elif issubclass(exc_type, KeyboardInterrupt):
            self.fail("interrupted")
        else:
            self.fail(f"{exc_type.__name__}: {exc}")
        return False

    def _finish(self, status: str) -> None:
        self.closed = True
        self.meta.update(status=status, end_time=_now(), counts=self.counts())
        _write_json(self.run_dir / "run.json", self.meta)

    def _add(self, table: _Table, row: dict[str, Any]) -> None:
        self._check_open()
        table.add(row)
        self._flush_if_full(table)

    def _flush_if_full(self, table: _Table) -> None:
        if table.n_buffered >= self.flush_every:
            table.flush()

    def _tables(self) -> list[_Table]:
        return [t for t in (self.steps, self.requests, self.tokens) if t is not None]

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"the recorder of {self.run_dir} is already closed")


def run_environment() -> dict[str, Any]:
    """Versions, git commit, device and BLAS of this process, for run.json."""
    import mlx.core as mx  # testbed (imported above) has already loaded the fast BLAS

    import testbed
    from testbed import blas

    return {
        "versions": {"python": platform.python_version(), "mlx": mx.__version__,
                     "testbed": testbed.__version__, "git_commit": _git_commit()},
        "device": str(mx.default_device()),
        "platform": platform.platform(),
        "blas": blas.status(),
    }


def _git_commit() -> str | None:
    """The commit of the source tree testbed runs from (None outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


class RunData(NamedTuple):
    steps: pd.DataFrame
    requests: pd.DataFrame
    tokens: pd.DataFrame | None  # None when the run did not record tokens
    meta: dict[str, Any]


def read_run(run_dir: str | os.PathLike) -> RunData:
    """The three tables and run.json of a run directory (complete, failed or killed)."""
    run_dir = Path(run_dir)
    meta_path = run_dir / "run.json"
    if not meta_path.is_file():
        raise ValueError(f"{run_dir} is not a run directory: no run.json")
    meta = json.loads(meta_path.read_text())
    requests = read_table(run_dir / "requests.parquet", REQUEST_SCHEMA)
    requests["slo_met"] = requests["slo_met"].astype("boolean")
    tokens_dir = run_dir / "tokens.parquet"
    tokens = read_table(tokens_dir, TOKEN_SCHEMA) if tokens_dir.is_dir() else None
    return RunData(read_table(run_dir / "steps.parquet", STEP_SCHEMA), requests, tokens, meta)


def read_table(directory: Path, schema: dict[str, pa.DataType]) -> pd.DataFrame:
    """All part files of a table directory, in order (an empty frame if there are none yet)."""
    parts = sorted(directory.glob("part-*.parquet")) if directory.is_dir() else []
    tables = []
    for part in parts:
        try:
            tables.append(pq.read_table(part))
        except (pa.ArrowInvalid, OSError) as e:
            raise ValueError(f"unreadable part file {part}: {e}") from None
    if not tables:
        return pa.schema(list(schema.items())).empty_table().to_pandas()
    try:
        return pa.concat_tables(tables).to_pandas()
    except pa.ArrowInvalid as e:
        raise ValueError(f"part files of {directory} disagree on their columns: {e}") from None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_plain(data), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def _plain(value: Any) -> Any:
    """JSON-safe: numpy scalars to Python, NaN and infinities to None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
