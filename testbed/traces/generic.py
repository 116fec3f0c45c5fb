"""A trace in any CSV, JSON Lines or Parquet file, given which of its fields are which.

`columns` maps schema columns to the file's fields (`{"arrival_s": "ts", "prompt_len":
"input_tokens"}`); a schema column not mapped is taken from a field of its own name when the
file has one. Other fields are not part of a trace and are left out. List-valued columns
(`prompt_token_ids`, `block_hashes`) are JSON text in CSV cells, native lists elsewhere.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from testbed.traces.formats import row_ids
from testbed.traces.schema import COLUMNS, REQUIRED_COLUMNS, Trace
from testbed.traces.tables import (TIME_UNITS, SourceTable, datetime_seconds, json_lists,
                                   read_csv_table, read_jsonl_table, read_parquet_table,
                                   seconds_column)

TABLE_READERS = {".csv": read_csv_table, ".jsonl": read_jsonl_table, ".ndjson": read_jsonl_table,
                 ".json": read_jsonl_table, ".parquet": read_parquet_table}
TIME_UNIT_CHOICES = (*TIME_UNITS, "datetime")


def read_generic(path: Path, columns: Mapping[str, str] | None = None, time_unit: str = "s",
                 hash_block_size: int = 0) -> Trace:
    """Read a CSV / JSONL / Parquet trace (by suffix; a directory is read as Parquet parts).
    Arrival times are numbers in `time_unit` ("s", "ms", "us") or ISO 8601 date-times
    ("datetime"); either way they become seconds since the first request."""
    columns = dict(columns or {})
    unknown = sorted(set(columns) - set(COLUMNS))
    if unknown:
        raise ValueError(f"columns: {unknown} are not trace columns; choose from {COLUMNS}")
    if time_unit not in TIME_UNIT_CHOICES:
        raise ValueError(f"time_unit {time_unit!r}: choose one of {', '.join(TIME_UNIT_CHOICES)}")
    table = _read_table(path)
    fields = {c: columns.get(c, c) for c in COLUMNS}
    table.require(*(fields[c] for c in REQUIRED_COLUMNS if c != "request_id"))
    present = [c for c in COLUMNS if fields[c] in table.df.columns]
    loc = table.locator(fields)
    raw = {c: table.df[fields[c]] for c in present}
    df = pd.DataFrame({"request_id": raw["request_id"].to_numpy(dtype=object)
                       if "request_id" in raw else row_ids(len(table.df))})
    df["arrival_s"] = (datetime_seconds(raw["arrival_s"], loc, "arrival_s")
                       if time_unit == "datetime"
                       else seconds_column(raw["arrival_s"], loc, "arrival_s", time_unit))
    for column in present:
        if column in ("prompt_token_ids", "block_hashes"):
            df[column] = pd.Series(json_lists(raw[column], loc, column), dtype=object)
        elif column not in ("request_id", "arrival_s"):
            df[column] = raw[column].to_numpy()
    return Trace(df, name=path.stem, source=str(path), hash_block_size=hash_block_size,
                 locator=loc)


def _read_table(path: Path) -> SourceTable:
    if path.is_dir():
        return read_parquet_table(path)
    reader = TABLE_READERS.get(path.suffix.lower())
    if reader is None:
        raise ValueError(f"{path}: unknown file type {path.suffix!r}; generic traces are "
                         f"{', '.join(TABLE_READERS)} files or a directory of Parquet parts")
    return reader(path)
