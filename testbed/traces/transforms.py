"""Trace transforms: each takes a Trace and returns a new one with a note of what it did.

`apply_transforms(trace, spec)` runs several in order from a config mapping, e.g.
`{"window": {"start_s": 600, "end_s": 1200}, "rate_scale": 2.0, "head": 500}`: a mapping
value is keyword arguments, a scalar the single argument, and null leaves the transform out
(so a config group can list every transform as null). A list of one-key mappings runs the
same transform more than once.
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from testbed.registry import Registry
from testbed.traces.schema import Trace

TRANSFORMS: Registry[Trace] = Registry("trace transform")


@TRANSFORMS.register("window")
def window(trace: Trace, start_s: float = 0.0, end_s: float | None = None) -> Trace:
    """The requests arriving in [start_s, end_s), with times re-zeroed at `start_s`."""
    if end_s is not None and end_s <= start_s:
        raise ValueError(f"window: end_s {end_s} must be after start_s {start_s}")
    arrival = trace.df["arrival_s"].to_numpy()
    keep = (arrival >= start_s) & (arrival < (np.inf if end_s is None else end_s))
    if not keep.any():
        raise ValueError(f"{trace.name}: window [{start_s}, {end_s}) s holds no requests "
                         f"(arrivals span 0 to {trace.duration_s:.3f} s)")
    df = trace.df[keep].copy()
    df["arrival_s"] -= start_s
    return trace.replace(df, note=f"window [{start_s}, {end_s}) s, re-zeroed")


@TRANSFORMS.register("rate_scale")
def rate_scale(trace: Trace, factor: float) -> Trace:
    """Multiply the request rate by `factor` (divide every arrival time by it)."""
    if not factor > 0:
        raise ValueError(f"rate_scale: factor must be > 0, got {factor}")
    df = trace.df.copy()
    df["arrival_s"] /= factor
    return trace.replace(df, note=f"rate x{factor}")


@TRANSFORMS.register("length_scale")
def length_scale(trace: Trace, prompt: float = 1.0, output: float = 1.0) -> Trace:
    """Multiply prompt and output lengths, rounding, at least 1 token."""
    if not (prompt > 0 and output > 0):
        raise ValueError(f"length_scale: factors must be > 0, got {prompt}, {output}")
    df = trace.df
    scaled = {c: np.maximum(np.rint(df[c].to_numpy() * f), 1).astype(np.int64)
              for c, f in (("prompt_len", prompt), ("output_len", output))}
    return trace.replace(_with_lengths(trace, **scaled),
                         note=f"lengths x{prompt} (prompt), x{output} (output)")


@TRANSFORMS.register("clip_lengths")
def clip_lengths(trace: Trace, prompt_min: int | None = None, prompt_max: int | None = None,
                 output_min: int | None = None, output_max: int | None = None) -> Trace:
    """Clip lengths into [min, max] (a bound left out is not applied)."""
    bounds = {"prompt_len": (prompt_min, prompt_max), "output_len": (output_min, output_max)}
    clipped = {}
    for column, (low, high) in bounds.items():
        if any(b is not None and b < 1 for b in (low, high)) or (
                low is not None and high is not None and low > high):
            raise ValueError(f"clip_lengths: {column} bounds [{low}, {high}] must be >= 1, "
                             "min <= max")
        clipped[column] = np.clip(trace.df[column].to_numpy(), low, high)
    return trace.replace(_with_lengths(trace, **clipped),
                         note=f"lengths clipped: prompt [{prompt_min}, {prompt_max}], "
                              f"output [{output_min}, {output_max}]")


@TRANSFORMS.register("head")
def head(trace: Trace, n: int) -> Trace:
    """The first `n` requests."""
    if n < 1:
        raise ValueError(f"head: n must be >= 1, got {n}")
    return trace.replace(trace.df.iloc[:n], note=f"first {n} requests")


@TRANSFORMS.register("sample")
def sample(trace: Trace, n: int | None = None, fraction: float | None = None,
           seed: int = 0) -> Trace:
    """A seeded random subset of `n` requests (or `fraction` of them, rounded, at least
    one), kept in arrival order and at their arrival times: the rate thins accordingly."""
    if (n is None) == (fraction is None):
        raise ValueError("sample: give n or fraction")
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise ValueError(f"sample: fraction must be in (0, 1], got {fraction}")
        n = max(1, round(fraction * len(trace)))
    if not 1 <= n <= len(trace):
        raise ValueError(f"sample: n must be in [1, {len(trace)}] for {trace.name}, got {n}")
    rows = np.sort(np.random.default_rng(seed).choice(len(trace), n, replace=False))
    return trace.replace(trace.df.iloc[rows], note=f"random {n} of {len(trace)} requests, seed {seed}")


def apply_transforms(trace: Trace, spec: Mapping | Sequence[Mapping] | None) -> Trace:
    """Apply the transforms named in `spec`, in order (see the module docstring)."""
    steps = list(spec.items()) if isinstance(spec, Mapping) else [
        item for step in spec or () for item in _one_step(step)]
    for name, args in steps:
        transform = TRANSFORMS.get(name)
        if args is None:
            continue
        try:
            if isinstance(args, Mapping):
                trace = transform(trace, **dict(args))
            else:
                trace = transform(trace, args)
        except TypeError as e:
            options = list(inspect.signature(transform).parameters)[1:]
            raise ValueError(f"transform {name!r}: {e}; its options: {', '.join(options)}") from None
    return trace


def _one_step(step: Mapping) -> list[tuple]:
    if not isinstance(step, Mapping) or len(step) != 1:
        raise ValueError(f"transform list item {step!r}: expected one {{name: options}} mapping")
    return list(step.items())


def _with_lengths(trace: Trace, prompt_len: np.ndarray, output_len: np.ndarray) -> pd.DataFrame:
    """A copy of the frame with new lengths. Shorter prompts keep the prefix of their token
    ids and block hashes; a prompt cannot grow past known ids, nor change under a text."""
    df = trace.df.copy()
    old = df["prompt_len"].to_numpy()
    changed = prompt_len != old
    if changed.any():
        if trace.has("prompt_text"):
            raise ValueError(f"{trace.name}: prompt lengths cannot change in a trace with "
                             "prompt_text (the text would no longer have that many tokens)")
        known = [c for c in ("prompt_token_ids", "block_hashes") if trace.has(c)]
        grown = np.flatnonzero(prompt_len > old)
        if known and len(grown):
            i = grown[0]
            raise ValueError(f"{trace.name}: request {df['request_id'].iloc[i]!r} would grow "
                             f"from {old[i]} to {prompt_len[i]} prompt tokens past its known "
                             f"{' and '.join(known)}")
        if "prompt_token_ids" in known:
            df["prompt_token_ids"] = [ids[:k] for ids, k in zip(df["prompt_token_ids"], prompt_len)]
        if "block_hashes" in known:
            blocks = -(-prompt_len // trace.hash_block_size)
            df["block_hashes"] = [h[:k] for h, k in zip(df["block_hashes"], blocks)]
    df["prompt_len"] = prompt_len
    df["output_len"] = output_len
    return df
