"""Serving metrics: the one definition used by the replay driver, the recorder and analysis.

Per request (times in seconds on the run's clock, as vLLM's benchmark_serving defines them):
  TTFT = first_token_s - arrival_s
  TPOT = (e2e - ttft) / (n_output_tokens - 1)   (NaN for 1-token outputs)
  ITL  = gaps between consecutive output tokens (needs tokens.parquet)
  E2E  = finish_s - arrival_s
  queue = first_scheduled_s - arrival_s
  normalized latency = e2e / n_output_tokens
Latency statistics cover finished requests. Percentiles use numpy's default "linear" method
(as vLLM's benchmark); NaNs are left out. Throughput divides by the run's duration, from the
first arrival to the last finish. SLO attainment is the fraction of *all* requests (rejected
and aborted ones count as missed) meeting every given limit; goodput is those requests per
second of duration.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import pandas as pd

STATS = ("mean", "median", "p90", "p99")
LATENCIES = ("ttft", "tpot", "itl", "e2e", "queue", "norm_latency")
LATENCY_UNITS = {"norm_latency": "s_per_tok"}  # the others are seconds

REQUEST_TIME_COLUMNS = ("arrival_s", "first_scheduled_s", "first_token_s", "finish_s")
SUMMARY_REQUEST_COLUMNS = (*REQUEST_TIME_COLUMNS, "request_id", "prompt_len", "n_output_tokens",
                           "cached_prompt_tokens", "status")
SUMMARY_STEP_COLUMNS = ("seconds", "n_seqs", "n_batched_tokens", "kv_blocks_used", "kv_blocks_free",
                        "prefix_hit_tokens", "n_preempted", "n_swapped_out", "n_swapped_in")


@dataclass(frozen=True, slots=True)
class SLO:
    """Per-request latency limits in seconds; None means no limit on that metric."""

    ttft_s: float | None = None
    tpot_s: float | None = None
    e2e_s: float | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SLO:
        """From a config mapping such as the `slo` group (`ttft_s`, `tpot_s`, `e2e_s`)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown SLO field(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: None if v is None else float(v) for k, v in d.items()})

    @property
    def limits(self) -> dict[str, float]:
        """The given limits by metric name (`ttft`, `tpot`, `e2e`)."""
        return {k.removesuffix("_s"): v for k, v in asdict(self).items() if v is not None}

    def is_met(self, status, ttft, tpot, e2e):
        """Whether each request meets every given limit (works on scalars and arrays).

        Only finished requests can meet an SLO. A NaN TPOT (one output token, so no
        inter-token time) meets any TPOT limit.
        """
        ok = np.asarray(status) == "finished"
        if self.ttft_s is not None:
            ok = ok & (np.asarray(ttft, dtype=float) <= self.ttft_s)
        if self.tpot_s is not None:
            tpot = np.asarray(tpot, dtype=float)
            ok = ok & (np.isnan(tpot) | (tpot <= self.tpot_s))
        if self.e2e_s is not None:
            ok = ok & (np.asarray(e2e, dtype=float) <= self.e2e_s)
        return ok


def latencies(arrival_s, first_scheduled_s, first_token_s, finish_s, n_output_tokens
              ) -> dict[str, np.ndarray]:
    """Per-request latencies from raw times (scalars or arrays; NaN where a time is missing)."""
    arrival = np.asarray(arrival_s, dtype=float)
    first_token = np.asarray(first_token_s, dtype=float)
    n_out = np.asarray(n_output_tokens, dtype=float)
    ttft = first_token - arrival
    e2e = np.asarray(finish_s, dtype=float) - arrival
    with np.errstate(divide="ignore", invalid="ignore"):
        tpot = np.where(n_out > 1, (e2e - ttft) / (n_out - 1), np.nan)
        norm = np.where(n_out > 0, e2e / n_out, np.nan)
    return {"ttft": ttft, "tpot": tpot, "e2e": e2e,
            "queue": np.asarray(first_scheduled_s, dtype=float) - arrival, "norm_latency": norm}


def request_latencies(arrival_s: float, first_scheduled_s: float | None,
                      first_token_s: float | None, finish_s: float | None,
                      n_output_tokens: int) -> dict[str, float]:
    """`latencies` for one request, as plain floats (None times become NaN)."""
    nan = math.nan
    values = latencies(arrival_s, nan if first_scheduled_s is None else first_scheduled_s,
                       nan if first_token_s is None else first_token_s,
                       nan if finish_s is None else finish_s, n_output_tokens)
    return {k: float(v) for k, v in values.items()}


def inter_token_latencies(tokens: pd.DataFrame, request_ids=None) -> np.ndarray:
    """Gaps between consecutive output tokens of each request (optionally only `request_ids`)."""
    _require(tokens, ("request_id", "index", "t"), "tokens")
    if request_ids is not None:
        tokens = tokens[tokens["request_id"].isin(request_ids)]
    ordered = tokens.sort_values(["request_id", "index"], kind="stable")
    gaps = ordered.groupby("request_id", sort=False)["t"].diff()
    return gaps.dropna().to_numpy(dtype=float)


def times_from_tokens(tokens: pd.DataFrame) -> pd.DataFrame:
    """Per request: first token time, finish time (last token) and token count, from tokens."""
    _require(tokens, ("request_id", "index", "t"), "tokens")
    g = tokens.groupby("request_id")["t"]
    return pd.DataFrame({"first_token_s": g.min(), "finish_s": g.max(),
                         "n_output_tokens": g.size()}).reset_index()


def stats(values) -> dict[str, float]:
    """Mean, median, p90, p99 of the non-NaN values (numpy linear percentiles); NaN if none."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return dict.fromkeys(STATS, math.nan)
    p50, p90, p99 = np.percentile(v, [50, 90, 99])
    return {"mean": float(v.mean()), "median": float(p50), "p90": float(p90), "p99": float(p99)}


def stat_key(metric: str, stat: str) -> str:
    """Summary key of one latency statistic, e.g. `ttft_p99_s`."""
    return f"{metric}_{stat}_{LATENCY_UNITS.get(metric, 's')}"


def summarize(requests: pd.DataFrame, steps: pd.DataFrame, tokens: pd.DataFrame | None = None,
              slo: SLO | None = None) -> dict[str, float | int | None]:
    """The flat, JSON-friendly summary of one run (NaN becomes None; every key always there).

    Besides the module's definitions: `prefix_hit_rate` is cached prompt tokens over prompt
    tokens of admitted (not rejected) requests, counted at first admission, so it lies in
    [0, 1]; `prefix_hit_tokens` sums the steps' hits, re-admissions after preemption
    included. KV use is a fraction of the capacity (used + free blocks) per step; its mean
    and the batch sizes are means over steps.
    """
    _require(requests, SUMMARY_REQUEST_COLUMNS, "requests")
    _require(steps, SUMMARY_STEP_COLUMNS, "steps")
    status = requests["status"].to_numpy()
    finished = status == "finished"
    done = requests[finished]
    lat = latencies(*(requests[c] for c in REQUEST_TIME_COLUMNS), requests["n_output_tokens"])

    out: dict[str, Any] = {
        "n_requests": len(requests),
        "n_finished": len(done),
        "n_rejected": int((status == "rejected").sum()),
        "n_aborted": int((status == "aborted").sum()),
    }
    arrivals = requests["arrival_s"].to_numpy(dtype=float)
    span = arrivals.max() - arrivals.min() if len(arrivals) else math.nan
    duration = done["finish_s"].max() - arrivals.min() if len(done) else math.nan
    out["duration_s"] = duration
    out["offered_rate_req_s"] = (len(arrivals) - 1) / span if span > 0 else math.nan
    prompt_tokens = int(done["prompt_len"].sum())
    output_tokens = int(done["n_output_tokens"].sum())
    out["prompt_tokens"] = prompt_tokens
    out["output_tokens"] = output_tokens
    out["throughput_req_s"] = _per(len(done), duration)
    out["throughput_output_tok_s"] = _per(output_tokens, duration)
    out["throughput_total_tok_s"] = _per(prompt_tokens + output_tokens, duration)

    for metric in ("ttft", "tpot", "e2e", "queue", "norm_latency"):
        _put_stats(out, metric, lat[metric][finished])
    itl = (inter_token_latencies(tokens, done["request_id"]) if tokens is not None
           else np.array([]))
    _put_stats(out, "itl", itl)

    slo = slo or SLO()
    out["slo_ttft_s"], out["slo_tpot_s"], out["slo_e2e_s"] = slo.ttft_s, slo.tpot_s, slo.e2e_s
    if slo.limits and len(requests):
        n_met = int(slo.is_met(status, lat["ttft"], lat["tpot"], lat["e2e"]).sum())
        out["slo_attainment"] = n_met / len(requests)
        out["goodput_req_s"] = _per(n_met, duration)
    else:
        out["slo_attainment"] = out["goodput_req_s"] = math.nan

    admitted = requests[status != "rejected"]
    out["prefix_hit_rate"] = _per(admitted["cached_prompt_tokens"].sum(), admitted["prompt_len"].sum())
    out.update(_step_summary(steps))
    return {k: _json_number(v) for k, v in out.items()}


def _step_summary(steps: pd.DataFrame) -> dict[str, Any]:
    used = steps["kv_blocks_used"].to_numpy(dtype=float)
    capacity = used + steps["kv_blocks_free"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = used / capacity
    empty = len(steps) == 0
    return {
        "n_steps": len(steps),
        "step_mean_s": math.nan if empty else steps["seconds"].mean(),
        "batch_mean_seqs": math.nan if empty else steps["n_seqs"].mean(),
        "batch_mean_tokens": math.nan if empty else steps["n_batched_tokens"].mean(),
        "kv_capacity_blocks": math.nan if empty else capacity.max(),
        "kv_used_mean_frac": math.nan if empty else np.nanmean(frac),
        "kv_used_peak_frac": math.nan if empty else np.nanmax(frac),
        "prefix_hit_tokens": int(steps["prefix_hit_tokens"].sum()),
        "preemptions": int(steps["n_preempted"].sum()),
        "swap_outs": int(steps["n_swapped_out"].sum()),
        "swap_ins": int(steps["n_swapped_in"].sum()),
    }


def _put_stats(out: dict, metric: str, values) -> None:
    for stat, value in stats(values).items():
        out[stat_key(metric, stat)] = value


def _per(numerator, denominator) -> float:
    return float(numerator) / float(denominator) if denominator and denominator > 0 else math.nan


def _json_number(v):
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if v is None or math.isnan(float(v)):
        return None
    return float(v)


def _require(frame: pd.DataFrame, columns, name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name} frame lacks column(s) {missing}")


# ---- formatting: the same tables for the terminal and the report ----

@dataclass(frozen=True, slots=True)
class Table:
    """A small titled table of already formatted cells."""

    title: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


LATENCY_LABELS = {"ttft": "TTFT (s)", "tpot": "TPOT (s)", "itl": "ITL (s)", "e2e": "E2E (s)",
                  "queue": "queueing (s)", "norm_latency": "E2E per token (s/tok)"}
OVERVIEW_ROWS = (
    ("requests", "n_requests"), ("finished", "n_finished"), ("rejected", "n_rejected"),
    ("aborted", "n_aborted"), ("duration (s)", "duration_s"),
    ("offered rate (req/s)", "offered_rate_req_s"), ("throughput (req/s)", "throughput_req_s"),
    ("output throughput (tok/s)", "throughput_output_tok_s"),
    ("total throughput (tok/s)", "throughput_total_tok_s"),
    ("SLO TTFT limit (s)", "slo_ttft_s"), ("SLO TPOT limit (s)", "slo_tpot_s"),
    ("SLO E2E limit (s)", "slo_e2e_s"), ("SLO attainment", "slo_attainment"),
    ("goodput (req/s)", "goodput_req_s"),
)
ENGINE_ROWS = (
    ("steps", "n_steps"), ("mean step time (s)", "step_mean_s"),
    ("mean batch (seqs)", "batch_mean_seqs"), ("mean batch (tokens)", "batch_mean_tokens"),
    ("KV capacity (blocks)", "kv_capacity_blocks"), ("KV used, mean (fraction)", "kv_used_mean_frac"),
    ("KV used, peak (fraction)", "kv_used_peak_frac"), ("prefix hit rate", "prefix_hit_rate"),
    ("prefix hit tokens", "prefix_hit_tokens"), ("preemptions", "preemptions"),
    ("swap-outs", "swap_outs"), ("swap-ins", "swap_ins"),
    ("weights (bytes)", "weights_bytes"), ("KV pool (bytes)", "kv_pool_bytes"),
    ("peak device memory (bytes)", "peak_memory_bytes"),
)


def format_number(value) -> str:
    """How every summary number is shown: integers as is, floats to 4 significant digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.4g}"


def summary_tables(summary: dict[str, Any]) -> list[Table]:
    """The summary as three tables: overview, latency statistics, engine."""
    def kv(title, rows):  # rows whose key the summary lacks (memory of a simulated run) left out
        return Table(title, ("metric", "value"),
                     tuple((label, format_number(summary[key])) for label, key in rows
                           if key in summary))

    latency_rows = tuple(
        (LATENCY_LABELS[m], *(format_number(summary.get(stat_key(m, s))) for s in STATS))
        for m in LATENCIES)
    return [kv("Requests and throughput", OVERVIEW_ROWS),
            Table("Latency", ("metric", *STATS), latency_rows),
            kv("Engine", ENGINE_ROWS)]


def format_table(table: Table) -> str:
    """A table as aligned text: first column left, numbers right."""
    cells = [table.header, *table.rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(table.header))]
    lines = [table.title]
    for row in cells:
        first = row[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(row[1:], widths[1:]))
        lines.append("  " + "  ".join((first, *rest)).rstrip())
    return "\n".join(lines)


def format_summary(summary: dict[str, Any]) -> str:
    """A compact aligned text rendering of `summarize`'s dict, for the terminal."""
    return "\n\n".join(format_table(t) for t in summary_tables(summary))
