"""Raw trace files as tables that remember the line each record came from.

Readers turn a `SourceTable` into the schema's columns; every error they raise names the
file, the line (1-based, header included, as a text editor shows it) and the source's field.
CSV cells are read as strings and parsed with vectorized pandas; the first bad cell is then
located for the message. (A quoted CSV field spanning several lines would shift the line
numbers after it; trace CSVs hold none.)
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from testbed.traces.schema import Locator, TraceError, first_true, numeric_column

TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


@dataclass(slots=True)
class SourceTable:
    """Records of one file: `df` holds the raw values, `lines[i]` where row i sits."""

    df: pd.DataFrame
    lines: np.ndarray
    path: Path
    unit: str = "line"  # "row" for Parquet
    header_line: int | None = None  # where a missing column is reported (CSV: the header)

    def locator(self, fields: Mapping[str, str]) -> Locator:
        """A Locator reporting schema columns under this file's field names."""
        return Locator(str(self.path), self.lines, self.unit, dict(fields))

    def require(self, *columns: str) -> None:
        for column in columns:
            if column not in self.df.columns:
                found = ", ".join(map(str, self.df.columns))
                raise TraceError(f"missing column (the file has: {found})", source=str(self.path),
                                 line=self.header_line, field=column, unit=self.unit)

    def keep(self, mask: np.ndarray) -> SourceTable:
        """The rows where `mask` is True, with their original line numbers."""
        return SourceTable(self.df[mask].reset_index(drop=True), self.lines[mask], self.path,
                           self.unit, self.header_line)

    def first_line(self, mask: np.ndarray) -> int | None:
        row = first_true(mask)
        return None if row is None else int(self.lines[row])


def read_csv_table(path: Path) -> SourceTable:
    """All cells as strings (empty cells as ""); blank lines are skipped, not data."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False,
                         encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise TraceError("empty file", source=str(path)) from None
    except pd.errors.ParserError as e:
        line = re.search(r"line (\d+)", str(e))
        raise TraceError(f"malformed CSV: {str(e).strip()}", source=str(path),
                         line=int(line.group(1)) if line else None) from None
    except UnicodeDecodeError as e:
        raise TraceError(f"not UTF-8 text: {e}", source=str(path)) from None
    lines = np.arange(len(df)) + 2  # line 1 is the header
    blank = (df == "").all(axis=1).to_numpy()
    table = SourceTable(df, lines, path, header_line=1).keep(~blank)
    if len(table.df) == 0:
        raise TraceError("empty file: a header but no requests", source=str(path))
    return table


def read_jsonl_table(path: Path) -> SourceTable:
    """One JSON object a line; blank lines are skipped. A key absent from a line is NaN."""
    records, lines = [], []
    with open(path, encoding="utf-8") as f:
        for number, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                raise TraceError(f"malformed JSON: {e.msg} (column {e.colno})", source=str(path),
                                 line=number) from None
            if not isinstance(record, dict):
                raise TraceError(f"expected a JSON object, got {type(record).__name__}",
                                 source=str(path), line=number)
            records.append(record)
            lines.append(number)
    if not records:
        raise TraceError("empty file", source=str(path))
    # A key missing from every record is reported at the first record.
    return SourceTable(pd.DataFrame.from_records(records), np.asarray(lines), path,
                       header_line=lines[0])


def read_parquet_table(path: Path) -> SourceTable:
    """A Parquet file (or a directory of part files); errors name 1-based rows."""
    try:
        df = pd.read_parquet(path)
    except (OSError, ValueError) as e:
        raise TraceError(f"unreadable Parquet: {e}", source=str(path)) from None
    if len(df) == 0:
        raise TraceError("empty file", source=str(path))
    return SourceTable(df.reset_index(drop=True), np.arange(len(df)) + 1, path, unit="row")


def seconds_column(values: pd.Series, loc: Locator, column: str, time_unit: str) -> np.ndarray:
    """Timestamps in `time_unit` ("s", "ms", "us"), as seconds since the first one."""
    if time_unit not in TIME_UNITS:
        raise ValueError(f"time_unit {time_unit!r}: choose one of {', '.join(TIME_UNITS)}")
    t = numeric_column(values, loc, column) * TIME_UNITS[time_unit]
    return t - t[0]


def datetime_seconds(values: pd.Series, loc: Locator, column: str) -> np.ndarray:
    """ISO 8601 date-times (any number of fractional digits, with or without a zone; a
    zone-less time is taken as UTC) as seconds since the first one."""
    times = pd.to_datetime(values, format="ISO8601", utc=True, errors="coerce")
    bad = first_true(times.isna().to_numpy())
    if bad is not None:
        raise loc.error(bad, column, f"{values.iloc[bad]!r} is not a date-time")
    return (times - times.iloc[0]).dt.total_seconds().to_numpy()


def json_lists(values: pd.Series, loc: Locator, column: str) -> list:
    """Cells holding JSON lists (as text in CSV) parsed to lists; other values pass through."""
    out = []
    for row, value in enumerate(values.tolist()):
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise loc.error(row, column, f"malformed JSON list: {e.msg}") from None
        out.append(value)
    return out
