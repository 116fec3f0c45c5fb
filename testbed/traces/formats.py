"""Readers for the public trace formats. Each takes a path (and options) and returns a
validated `Trace` whose arrivals count seconds from the first request.

- `azure`: Azure LLM inference traces, 2023 (`TIMESTAMP` like `2023-11-16 18:17:03.9799600`)
  and 2024 (`2024-05-10 00:00:00.009930+00:00`, fraction sometimes absent);
  `ContextTokens`, `GeneratedTokens`.
- `burstgpt`: BurstGPT CSV: `Timestamp` (s), `Request tokens`, `Response tokens`, `Model`,
  `Log Type` (+ `Session ID` in later releases).
- `mooncake`: Mooncake JSONL: `timestamp` (ms), `input_length`, `output_length`, `hash_ids`
  (512-token blocks). `bailian`: the same JSONL as Alibaba's Qwen-Bailian traces write it
  (seconds, 16-token blocks, `chat_id` / `parent_chat_id` giving request and session ids).
- `vidur`: Vidur / Splitwise-processed CSV: `arrived_at` (s), `num_prefill_tokens`,
  `num_decode_tokens` (+ optional `request_id`).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from testbed.traces.schema import Trace, TraceError, first_true, numeric_column
from testbed.traces.tables import (datetime_seconds, read_csv_table, read_jsonl_table,
                                   seconds_column)

log = logging.getLogger(__name__)

ZERO_OUTPUT_POLICIES = ("reject", "drop")


def row_ids(n: int) -> np.ndarray:
    """Request ids for formats that have none: the row's position, as text."""
    return np.arange(n).astype(str).astype(object)


def read_azure(path: Path) -> Trace:
    """Azure LLM inference trace CSV (2023 or 2024 layout)."""
    table = read_csv_table(path)
    table.require("TIMESTAMP", "ContextTokens", "GeneratedTokens")
    loc = table.locator({"arrival_s": "TIMESTAMP", "prompt_len": "ContextTokens",
                         "output_len": "GeneratedTokens"})
    df = pd.DataFrame({"request_id": row_ids(len(table.df)),
                       "arrival_s": datetime_seconds(table.df["TIMESTAMP"], loc, "arrival_s"),
                       "prompt_len": table.df["ContextTokens"],
                       "output_len": table.df["GeneratedTokens"]})
    return Trace(df, name=path.stem, source=str(path), locator=loc)


def read_burstgpt(path: Path, model: str | Sequence[str] | None = None,
                  log_type: str | Sequence[str] | None = None,
                  zero_output: str = "reject") -> Trace:
    """BurstGPT CSV. `model` / `log_type` keep only rows with those values. Rows with 0
    response tokens (failed requests in the released files) are an error with
    `zero_output="reject"`, or are dropped with `"drop"`, which logs and notes the count."""
    if zero_output not in ZERO_OUTPUT_POLICIES:
        raise ValueError(f"zero_output {zero_output!r}: choose one of {ZERO_OUTPUT_POLICIES}")
    table = read_csv_table(path)
    table.require("Timestamp", "Request tokens", "Response tokens")
    notes = []
    for column, wanted in (("Model", model), ("Log Type", log_type)):
        if wanted is None:
            continue
        table.require(column)
        wanted = [wanted] if isinstance(wanted, str) else list(wanted)
        keep = table.df[column].isin(wanted).to_numpy()
        if not keep.any():
            found = ", ".join(sorted(table.df[column].unique()))
            raise TraceError(f"no rows with {column} in {wanted} (the file has: {found})",
                             source=str(path), field=column)
        notes.append(f"kept {keep.sum()} of {len(keep)} rows with {column} in {wanted}")
        table = table.keep(keep)
    fields = {"arrival_s": "Timestamp", "prompt_len": "Request tokens",
              "output_len": "Response tokens"}
    session_column = next((c for c in ("Session ID", "SessionID") if c in table.df), None)
    if session_column:
        fields["session_id"] = session_column
    output = numeric_column(table.df["Response tokens"], table.locator(fields), "output_len",
                            integer=True)
    zero = output == 0
    if zero.any():
        if zero_output == "reject":
            raise table.locator(fields).error(
                first_true(zero), "output_len",
                f"0 response tokens (a failed request; {zero.sum()} such rows in the file): "
                "pass zero_output='drop' to leave them out")
        note = (f"dropped {zero.sum()} of {len(zero)} rows with 0 Response tokens "
                f"(failed requests; first at line {table.first_line(zero)})")
        log.warning("%s: %s", path, note)
        notes.append(note)
        table = table.keep(~zero)
    loc = table.locator(fields)
    df = pd.DataFrame({"request_id": row_ids(len(table.df)),
                       "arrival_s": seconds_column(table.df["Timestamp"], loc, "arrival_s", "s"),
                       "prompt_len": table.df["Request tokens"],
                       "output_len": table.df["Response tokens"]})
    if session_column:
        df["session_id"] = table.df[session_column].astype(str).to_numpy(dtype=object)
    return Trace(df, name=path.stem, source=str(path), notes=tuple(notes), locator=loc)


def read_mooncake(path: Path, hash_block_size: int = 512, time_unit: str = "ms") -> Trace:
    """Mooncake JSONL. Optional `chat_id` becomes the request id and `parent_chat_id`
    (-1 for a first turn) links turns into sessions named after their first request."""
    table = read_jsonl_table(path)
    table.require("timestamp", "input_length", "output_length")
    loc = table.locator({"arrival_s": "timestamp", "prompt_len": "input_length",
                         "output_len": "output_length", "block_hashes": "hash_ids",
                         "request_id": "chat_id", "session_id": "parent_chat_id"})
    raw = table.df
    df = pd.DataFrame({"request_id": row_ids(len(raw)),
                       "arrival_s": seconds_column(raw["timestamp"], loc, "arrival_s", time_unit),
                       "prompt_len": raw["input_length"], "output_len": raw["output_length"]})
    if "chat_id" in raw:
        chats = numeric_column(raw["chat_id"], loc, "request_id", integer=True)
        df["request_id"] = chats.astype(str).astype(object)
        if "parent_chat_id" in raw:
            parents = numeric_column(raw["parent_chat_id"], loc, "session_id", integer=True)
            df["session_id"] = session_roots(chats, parents)
    if "hash_ids" in raw:
        df["block_hashes"] = raw["hash_ids"]
    return Trace(df, name=path.stem, source=str(path),
                 hash_block_size=hash_block_size if "hash_ids" in raw else 0, locator=loc)


def read_bailian(path: Path, hash_block_size: int = 16, time_unit: str = "s") -> Trace:
    """Alibaba Qwen-Bailian JSONL: the Mooncake layout in seconds with 16-token blocks."""
    return read_mooncake(path, hash_block_size=hash_block_size, time_unit=time_unit)


def session_roots(chat_ids: np.ndarray, parent_ids: np.ndarray) -> np.ndarray:
    """Session id of each request: the chat id of its conversation's first request (a parent
    outside the trace stands for that first request). Parents precede children in time."""
    root: dict[int, int] = {}
    sessions = np.empty(len(chat_ids), dtype=object)
    for i, (chat, parent) in enumerate(zip(chat_ids.tolist(), parent_ids.tolist())):
        root[chat] = chat if parent == -1 else root.get(parent, parent)
        sessions[i] = str(root[chat])
    return sessions


def read_vidur(path: Path) -> Trace:
    """Vidur / Splitwise-processed CSV (`arrived_at` in seconds)."""
    table = read_csv_table(path)
    table.require("arrived_at", "num_prefill_tokens", "num_decode_tokens")
    loc = table.locator({"arrival_s": "arrived_at", "prompt_len": "num_prefill_tokens",
                         "output_len": "num_decode_tokens"})
    raw = table.df
    df = pd.DataFrame({"request_id": raw["request_id"].to_numpy(dtype=object)
                       if "request_id" in raw else row_ids(len(raw)),
                       "arrival_s": seconds_column(raw["arrived_at"], loc, "arrival_s", "s"),
                       "prompt_len": raw["num_prefill_tokens"],
                       "output_len": raw["num_decode_tokens"]})
    return Trace(df, name=path.stem, source=str(path), locator=loc)
