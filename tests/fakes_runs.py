"""Fake run and sweep directories for the recorder and analysis tests.

A toy continuous-batching loop (whole-prompt prefill, one decode token per step, paged KV
with preemption by recompute, a made-up prefix-hit model) produces schema-true rows and
writes them through the real Recorder, laid out as Hydra writes runs and multiruns.
"""
from __future__ import annotations

import itertools
import math
from collections import deque
from pathlib import Path

import numpy as np
import yaml

from testbed.metrics import SLO, request_latencies, summarize
from testbed.replay.recorder import Recorder, read_run

BLOCK = 16
MAX_MODEL_LEN = 256
SLO_DEFAULT = SLO(ttft_s=0.5, tpot_s=0.05)


def write_fake_run(run_dir: Path, *, rate: float = 4.0, n_requests: int = 40, max_batch: int = 8,
                   kv_blocks: int = 64, eviction: str = "lru", engine: str = "mlx",
                   prefix: bool = True, tokens: bool = True, seed: int = 0,
                   slo: SLO = SLO_DEFAULT, config: dict | None = None,
                   overrides: list[str] | None = None, flush_every: int = 50) -> Path:
    """Simulate a small run and record it in `run_dir` (with a .hydra/ folder)."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1 / rate, n_requests))
    prompts = rng.integers(8, 120, n_requests)
    outputs = rng.integers(1, 48, n_requests)
    outputs[1] = 1  # a one-token output: TPOT is NaN
    prompts[2] = MAX_MODEL_LEN + 50  # can never fit: rejected
    hit_share = (min(1.0, kv_blocks / 128) * (0.6 if eviction == "lru" else 0.35)) if prefix else 0.0
    noise = 0.0 if engine == "sim" else 0.15

    rec = Recorder(run_dir, tokens=tokens, flush_every=flush_every)
    _write_hydra(run_dir, config or {}, overrides or [])
    rec.start({"engine": engine, "policies": {"scheduler": "fake", "cache": eviction}})
    seqs = [dict(id=f"r{i}", arrival=float(arrivals[i]), prompt=int(prompts[i]), out_len=int(outputs[i]),
                 n_out=0, cached=0, admitted=False, first_sched=None, first_tok=None, preempt=0,
                 computed=0) for i in range(n_requests)]
    pending = deque(seqs)
    waiting: deque = deque()
    running: list = []
    t, step = 0.0, 0
    while pending or waiting or running:
        while pending and pending[0]["arrival"] <= t:
            s = pending.popleft()
            if s["prompt"] + s["out_len"] > MAX_MODEL_LEN:
                _record_request(rec, s, "rejected", "too long", slo)
            else:
                waiting.append(s)
        if not waiting and not running:
            if pending:
                t = pending[0]["arrival"]
            continue
        hit_tokens, prefill = 0, []
        while waiting and len(running) < max_batch and _demand([*running, waiting[0]]) <= kv_blocks:
            s = waiting.popleft()
            if not s["admitted"]:
                s["cached"] = int(s["prompt"] * hit_share * (0.5 + rng.random())) // BLOCK * BLOCK
                s["admitted"] = True
            hit_tokens += s["cached"]
            s["first_sched"] = t if s["first_sched"] is None else s["first_sched"]
            running.append(s)
            prefill.append(s)
        preempted = 0
        while _demand(running) > kv_blocks:
            victim = running.pop()  # the newest: preempt by recompute
            victim["preempt"] += 1
            preempted += 1
            waiting.appendleft(victim)
            if victim in prefill:
                prefill.remove(victim)
                hit_tokens -= victim["cached"]
        if not running:
            continue
        prefill_tokens = sum(s["prompt"] + s["n_out"] - s["cached"] for s in prefill)
        n_decode = len(running) - len(prefill)
        n_batched = prefill_tokens + n_decode
        sum_context = sum(s["prompt"] + s["n_out"] for s in running)
        seconds = (0.02 + 1e-4 * n_batched + 1e-6 * sum_context) * (1 + noise * rng.random())
        t_end = t + seconds
        for s in running:
            if tokens:
                rec.token(s["id"], s["n_out"], t_end)
            s["n_out"] += 1
            s["first_tok"] = t_end if s["first_tok"] is None else s["first_tok"]
        finished = [s for s in running if s["n_out"] == s["out_len"]]
        running = [s for s in running if s["n_out"] < s["out_len"]]
        used_after = sum(_blocks(s["prompt"] + s["n_out"]) for s in running)
        rec.step({
            "step": step, "t_start": t, "t_end": t_end, "seconds": seconds,
            "host_seconds": seconds * 0.1, "device_seconds": math.nan if engine == "sim" else seconds * 0.9,
            "n_seqs": len(running) + len(finished), "n_prefill_seqs": len(prefill),
            "n_prefill_tokens": prefill_tokens, "n_decode_seqs": n_decode,
            "n_batched_tokens": n_batched, "sum_context": sum_context,
            "kv_blocks_used": used_after, "kv_blocks_free": kv_blocks - used_after,
            "prefix_hit_tokens": hit_tokens, "n_preempted": preempted, "n_swapped_out": 0,
            "n_swapped_in": 0, "n_waiting": len(waiting), "n_running": len(running),
            "n_swapped": 0,
            # cost-model features: one integral, one that is NaN in every step of a sim run
            "sum_prefill_sq": sum((s["prompt"] - s["cached"]) ** 2 for s in prefill),
            "measured_overhead_s": math.nan if engine == "sim" else 0.02,
        })
        for s in finished:
            s["finish"] = t_end
            _record_request(rec, s, "finished", "length", slo)
        t, step = t_end, step + 1
    rec.flush()
    steps, requests, toks, _ = read_run(run_dir)  # the summary the driver would write
    rec.close(summary=summarize(requests, steps, toks, slo))
    return Path(run_dir)


def _record_request(rec: Recorder, s: dict, status: str, reason: str, slo: SLO) -> None:
    done = status == "finished"
    first_sched = s["first_sched"] if done else None
    first_tok = s["first_tok"] if done else None
    finish = s.get("finish") if done else None
    lat = request_latencies(s["arrival"], first_sched, first_tok, finish, s["n_out"])
    rec.request({
        "request_id": s["id"], "arrival_s": s["arrival"], "prompt_len": s["prompt"],
        "output_len": s["out_len"], "n_output_tokens": s["n_out"],
        "cached_prompt_tokens": s["cached"], "first_scheduled_s": first_sched,
        "first_token_s": first_tok, "finish_s": finish, "ttft": lat["ttft"],
        "tpot": lat["tpot"], "e2e": lat["e2e"], "queue_s": lat["queue"],
        "n_preemptions": s["preempt"], "status": status, "reason": reason,
        "slo_met": bool(slo.is_met(status, lat["ttft"], lat["tpot"], lat["e2e"])),
        "priority": 0,
    })


def _demand(seqs: list[dict]) -> int:
    """KV blocks the sequences need to hold their tokens plus the one this step adds."""
    return sum(_blocks(s["prompt"] + s["n_out"] + 1) for s in seqs)


def _blocks(n_tokens: int) -> int:
    return -(-n_tokens // BLOCK)


def _write_hydra(run_dir: Path, config: dict, overrides: list[str]) -> None:
    hydra = Path(run_dir) / ".hydra"
    hydra.mkdir(parents=True, exist_ok=True)
    (hydra / "config.yaml").write_text(yaml.safe_dump(config))
    (hydra / "overrides.yaml").write_text(yaml.safe_dump(overrides))


# ---- sweeps ----

KNOBS = {  # override key -> write_fake_run argument
    "scheduler": ("max_batch", {"vllm": 8, "sarathi": 4}),
    "trace.rate_scale": ("rate", lambda v: 4.0 * v),
    "cache.eviction": ("eviction", lambda v: v),
    "engine.kv_memory_gb": ("kv_blocks", lambda v: int(256 * v)),
    "engine": ("engine", lambda v: v),
}


def write_fake_sweep(sweep_dir: Path, grid: dict[str, list], **run_kwargs) -> Path:
    """A Hydra multirun directory: one numbered job per combination of `grid` values, all
    replaying the same trace."""
    sweep_dir = Path(sweep_dir)
    keys = list(grid)
    for job, values in enumerate(itertools.product(*grid.values())):
        kwargs = dict(run_kwargs)
        config = {"scheduler": {"name": "vllm"}, "cache": {"name": "prefix", "eviction": "lru"},
                  "engine": {"kind": "mlx"}, "trace": {"rate_scale": 1},
                  "slo": {"ttft_s": 0.5, "tpot_s": 0.05, "e2e_s": None}}
        for key, value in zip(keys, values):
            arg, mapping = KNOBS[key]
            kwargs[arg] = mapping[value] if isinstance(mapping, dict) else mapping(value)
            group, _, field = key.partition(".")
            config[group][field or ("kind" if group == "engine" else "name")] = value
        write_fake_run(sweep_dir / str(job), config=config,
                       overrides=[f"{k}={v}" for k, v in zip(keys, values)], **kwargs)
    (sweep_dir / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"mode": "MULTIRUN"}}))
    return sweep_dir
