"""One schema for every trace source: a table of requests, plus where it came from.

A `Trace` holds a pandas DataFrame with the columns below and its metadata. Every reader,
generator and transform builds its result through `Trace(...)`, which validates the frame, so
a Trace in hand always satisfies the schema:

- `request_id` (str, unique), `arrival_s` (float seconds from the trace's start, finite,
  >= 0, non-decreasing), `prompt_len` and `output_len` (int > 0): always present.
- `prompt_token_ids` (list of `prompt_len` ints), `prompt_text` (str), `block_hashes`
  (list[int], one id per `hash_block_size` tokens of the prompt; equal ids mean equal token
  blocks), `priority` (int, lower = more important), `session_id` (str): optional; a present
  column has a value in every row.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import InitVar, dataclass, field

import numpy as np
import pandas as pd

from testbed.request import Request, SamplingParams

REQUIRED_COLUMNS = ("request_id", "arrival_s", "prompt_len", "output_len")
OPTIONAL_COLUMNS = ("prompt_token_ids", "prompt_text", "block_hashes", "priority", "session_id")
COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS


class TraceError(ValueError):
    """Bad trace input. The message names the file, the line (or row) and the field."""

    def __init__(self, message: str, *, source: str = "", line: int | None = None,
                 field: str = "", unit: str = "line"):
        self.source, self.line, self.field = str(source), line, field
        where = [self.source] if source else []
        if line is not None:
            where.append(f"{unit} {line}")
        if field:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


@dataclass(frozen=True, slots=True)
class Locator:
    """Maps the rows and columns of a frame back to the file they came from, so that an
    error can name the file, the line (as a text editor numbers it) and the source's field."""

    source: str = ""
    lines: np.ndarray | None = None  # line (or row) number of each frame row; default row + 1
    unit: str = "row"
    fields: Mapping[str, str] = field(default_factory=dict)  # schema column -> source field

    def error(self, row: int | None, column: str, message: str) -> TraceError:
        line = None if row is None else int(self.lines[row]) if self.lines is not None else row + 1
        return TraceError(message, source=self.source, line=line,
                          field=self.fields.get(column, column), unit=self.unit)


def first_true(mask: np.ndarray) -> int | None:
    """Index of the first True in a boolean array, or None."""
    hits = np.flatnonzero(mask)
    return int(hits[0]) if len(hits) else None


def numeric_column(values: pd.Series | np.ndarray | Sequence, loc: Locator, column: str,
                   *, integer: bool = False) -> np.ndarray:
    """Parse values as numbers (float64, or int64 with `integer`). The first missing,
    malformed or non-integral value is a TraceError at its line."""
    raw = pd.Series(values).reset_index(drop=True)
    numbers = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = first_true(np.isnan(numbers))
    if bad is not None:
        value = raw.iloc[bad]
        missing = np.ndim(value) == 0 and (pd.isna(value) or value == "")
        raise loc.error(bad, column, "missing value" if missing else f"{value!r:.80} is not a number")
    if not integer:
        return numbers
    bad = first_true(~np.isfinite(numbers) | (numbers != np.floor(numbers)))
    if bad is not None:
        raise loc.error(bad, column, f"{raw.iloc[bad]!r} is not an integer")
    return numbers.astype(np.int64)


def validate(df: pd.DataFrame, loc: Locator | None = None,
             hash_block_size: int = 0) -> pd.DataFrame:
    """Check `df` against the schema and return it normalized: columns in schema order,
    a fresh RangeIndex, typed columns. Every reader uses this; errors go through `loc`."""
    loc = loc or Locator()
    unknown = [c for c in df.columns if c not in COLUMNS]
    if unknown:
        raise loc.error(None, str(unknown[0]),
                        f"not a trace column; trace columns are: {', '.join(COLUMNS)}")
    for column in REQUIRED_COLUMNS:
        if column not in df.columns:
            raise loc.error(None, column, "missing column")
    if len(df) == 0:
        raise TraceError("no requests", source=loc.source)
    df = df.reset_index(drop=True)
    out = {"request_id": _request_ids(df["request_id"], loc),
           "arrival_s": _arrivals(df["arrival_s"], loc)}
    for column in ("prompt_len", "output_len"):
        out[column] = _positive_ints(df[column], loc, column)
    if "prompt_token_ids" in df:
        out["prompt_token_ids"] = _token_ids(df["prompt_token_ids"], out["prompt_len"], loc)
    if "prompt_text" in df:
        out["prompt_text"] = _strings(df["prompt_text"], loc, "prompt_text")
    if "block_hashes" in df:
        out["block_hashes"] = _block_hashes(df["block_hashes"], out["prompt_len"],
                                            hash_block_size, loc)
    if "priority" in df:
        out["priority"] = numeric_column(df["priority"], loc, "priority", integer=True)
    if "session_id" in df:
        out["session_id"] = _strings(df["session_id"], loc, "session_id")
    return pd.DataFrame({c: out[c] for c in COLUMNS if c in out})


def _request_ids(values: pd.Series, loc: Locator) -> np.ndarray:
    missing = first_true(values.isna().to_numpy())
    if missing is not None:
        raise loc.error(missing, "request_id", "missing value")
    ids = values.astype(str).to_numpy(dtype=object)
    duplicated = first_true(pd.Series(ids).duplicated().to_numpy())
    if duplicated is not None:
        raise loc.error(duplicated, "request_id", f"duplicate request id {ids[duplicated]!r}")
    return ids


def _arrivals(values: pd.Series, loc: Locator) -> np.ndarray:
    t = numeric_column(values, loc, "arrival_s")
    bad = first_true(~np.isfinite(t))
    if bad is not None:
        raise loc.error(bad, "arrival_s", f"arrival time {t[bad]} is not finite")
    back = first_true(np.diff(t) < 0)
    if back is not None:
        raise loc.error(back + 1, "arrival_s",
                        f"timestamp goes backwards: {t[back + 1]:.6f} s after {t[back]:.6f} s "
                        "(requests must be in arrival order)")
    if t[0] < 0:
        raise loc.error(0, "arrival_s", f"negative arrival time {t[0]} s")
    return t


def _positive_ints(values: pd.Series, loc: Locator, column: str) -> np.ndarray:
    n = numeric_column(values, loc, column, integer=True)
    bad = first_true(n <= 0)
    if bad is not None:
        raise loc.error(bad, column, f"length must be a positive integer, got {n[bad]}")
    return n


def _strings(values: pd.Series, loc: Locator, column: str) -> np.ndarray:
    items = values.to_numpy(dtype=object)
    bad = first_true(np.array([not isinstance(v, str) for v in items]))
    if bad is not None:
        raise loc.error(bad, column, f"expected a string, got {items[bad]!r}")
    return items


def _int_lists(values: pd.Series, loc: Locator, column: str) -> np.ndarray:
    """Each value a list (or 1-D array) of non-negative integers; returned as arrays."""
    items = values.to_numpy(dtype=object)
    out = np.empty(len(items), dtype=object)
    for i, value in enumerate(items):
        if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
            raise loc.error(i, column, f"expected a list of integers, got {value!r:.80}")
        array = np.asarray(value)
        if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
            raise loc.error(i, column, f"expected a list of integers, got {value!r:.80}")
        if array.size and array.min() < 0:
            raise loc.error(i, column, f"negative id {array.min()}")
        out[i] = array
    return out


def _token_ids(values: pd.Series, prompt_len: np.ndarray, loc: Locator) -> np.ndarray:
    ids = _int_lists(values, loc, "prompt_token_ids")
    bad = first_true(np.fromiter(map(len, ids), np.int64, len(ids)) != prompt_len)
    if bad is not None:
        raise loc.error(bad, "prompt_token_ids",
                        f"{len(ids[bad])} token ids for a prompt of {prompt_len[bad]} tokens")
    return ids


def _block_hashes(values: pd.Series, prompt_len: np.ndarray, block_size: int,
                  loc: Locator) -> np.ndarray:
    """One hash per full block of the prompt; a partial last block may have one or not."""
    if block_size <= 0:
        raise loc.error(None, "block_hashes", "block hashes need a hash_block_size > 0")
    hashes = _int_lists(values, loc, "block_hashes")
    counts = np.fromiter(map(len, hashes), np.int64, len(hashes))
    full, any_part = prompt_len // block_size, -(-prompt_len // block_size)
    bad = first_true((counts < full) | (counts > any_part))
    if bad is not None:
        raise loc.error(bad, "block_hashes",
                        f"{counts[bad]} block hashes for a prompt of {prompt_len[bad]} tokens "
                        f"in blocks of {block_size} (expected {any_part[bad]})")
    return hashes


@dataclass(slots=True, repr=False)
class Trace:
    """A validated request table plus its provenance. `notes` record what was done to it
    (rows dropped or filtered by a reader, transforms applied), oldest first."""

    df: pd.DataFrame
    name: str = "trace"
    source: str = ""
    hash_block_size: int = 0
    license: str = ""
    citation: str = ""
    notes: tuple[str, ...] = ()
    locator: InitVar[Locator | None] = None  # where rows came from, for error messages

    def __post_init__(self, locator: Locator | None) -> None:
        self.df = validate(self.df, locator or Locator(source=self.name), self.hash_block_size)
        self.notes = tuple(self.notes)

    def __len__(self) -> int:
        return len(self.df)

    def __repr__(self) -> str:
        return (f"Trace({self.name!r}: {len(self)} requests over {self.duration_s:.1f} s, "
                f"columns {list(self.df.columns)})")

    @property
    def duration_s(self) -> float:
        """Time from the trace's start to its last arrival."""
        return float(self.df["arrival_s"].iloc[-1])

    def has(self, column: str) -> bool:
        return column in self.df.columns

    def replace(self, df: pd.DataFrame | None = None, note: str | None = None,
                **metadata) -> Trace:
        """A new Trace with another frame and/or metadata, `note` appended to the notes."""
        notes = self.notes + ((note,) if note else ())
        return dataclasses.replace(self, df=self.df if df is None else df, notes=notes,
                                   **metadata)

    def stats(self) -> dict[str, float]:
        """Size, rate and length statistics (mean, median, p99), as trace papers report them."""
        stats = {"requests": len(self), "duration_s": self.duration_s,
                 "rate_per_s": len(self) / self.duration_s if self.duration_s > 0 else np.inf}
        for column in ("prompt_len", "output_len"):
            values = self.df[column].to_numpy()
            stats[f"{column}_mean"] = float(values.mean())
            stats[f"{column}_p50"] = float(np.percentile(values, 50))
            stats[f"{column}_p99"] = float(np.percentile(values, 99))
        return stats

    def to_requests(self, ignore_eos: bool = True,
                    sampling: SamplingParams | None = None) -> list[Request]:
        """One `Request` per row, in arrival order. Each gets its own copy of `sampling`
        (default greedy) with `ignore_eos` set, so outputs run to the trace's lengths."""
        sampling = dataclasses.replace(sampling or SamplingParams(), ignore_eos=ignore_eos)
        columns = {c: self.df[c].tolist() for c in self.df.columns}
        n = len(self)
        token_ids = columns.get("prompt_token_ids", [None] * n)
        hashes = columns.get("block_hashes", [None] * n)
        texts = columns.get("prompt_text", [None] * n)
        priorities = columns.get("priority", [0] * n)
        sessions = columns.get("session_id", [None] * n)
        block_size = self.hash_block_size if self.has("block_hashes") else 0
        return [
            Request(request_id=columns["request_id"][i], arrival_s=columns["arrival_s"][i],
                    prompt_len=columns["prompt_len"][i], output_len=columns["output_len"][i],
                    prompt_token_ids=None if token_ids[i] is None else token_ids[i].tolist(),
                    prompt_text=texts[i],
                    block_hashes=None if hashes[i] is None else hashes[i].tolist(),
                    hash_block_size=block_size, priority=priorities[i], session_id=sessions[i],
                    sampling=dataclasses.replace(sampling))
            for i in range(n)
        ]
