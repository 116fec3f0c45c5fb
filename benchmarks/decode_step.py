"""Batched decode speed: the mean time of one decode step, ours vs mlx-lm's BatchGenerator,
same weights, same batch, run back to back (alternating, `--reps` times) in one process.

    python benchmarks/decode_step.py --model qwen2-small --dtype float32 --batch 8

Unlike `throughput.py`, prefill is left out: every sequence has its prompt (64 tokens) and
its first 20 steps done before steps are timed, and the mean covers the next 100 steps
(trace and re-trace costs included). Writes the rows to benchmarks/results/.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import testbed  # noqa: E402,F401  (fast BLAS before mlx)
import numpy as np  # noqa: E402

from benchmarks.peers import mlx_lm_model  # noqa: E402
from benchmarks.throughput import RESULTS, device_kind, device_name  # noqa: E402
from testbed.engine.engine import Engine  # noqa: E402
from testbed.engine.kv_pool import PagedKVPool  # noqa: E402
from testbed.engine.mlx_executor import MLXExecutor  # noqa: E402
from testbed.kv import make_kv_manager  # noqa: E402
from testbed.model.qwen2 import Qwen2Model  # noqa: E402
from testbed.model.sampling import sample_sequences  # noqa: E402
from testbed.request import Request, SamplingParams  # noqa: E402
from testbed.sched import make_scheduler  # noqa: E402
from testbed.weights import load_model  # noqa: E402

PROMPT, SKIP, TIMED = 64, 20, 100


def ours_steps(model: Qwen2Model, prompts: list[list[int]], compile_decode: bool | None) -> float:
    """Mean seconds of our engine's decode steps SKIP..SKIP+TIMED (overlapped steps)."""
    bs, total = 16, PROMPT + SKIP + TIMED + 2
    blocks = len(prompts) * -(-total // bs) + 8
    kv = make_kv_manager("paged", blocks, bs)
    sched = make_scheduler("vllm", {"max_num_seqs": len(prompts), "max_num_batched_tokens": 8192,
                                    "max_model_len": total}, kv)
    pool = PagedKVPool(model.config, blocks, bs, model.dtype)
    engine = Engine(sched, MLXExecutor(model, pool, sample_sequences, compile_decode), overlap=True)
    for i, p in enumerate(prompts):
        engine.add_request(Request(str(i), 0.0, len(p), SKIP + TIMED + 2, prompt_token_ids=p,
                                   sampling=SamplingParams(ignore_eos=True)))
    times = []
    while engine.has_unfinished:
        start = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - start)
    return float(np.mean(times[SKIP:SKIP + TIMED]))


def mlx_lm_steps(model, prompts: list[list[int]]) -> float:
    """Mean seconds of mlx-lm's BatchGenerator steps SKIP..SKIP+TIMED."""
    from mlx_lm.generate import BatchGenerator

    gen = BatchGenerator(model, max_tokens=SKIP + TIMED + 2, completion_batch_size=len(prompts),
                         prefill_batch_size=len(prompts))
    gen.insert(prompts, max_tokens=[SKIP + TIMED + 2] * len(prompts))
    times, done = [], 0
    while done < len(prompts):
        start = time.perf_counter()
        responses = gen.next_generated()
        times.append(time.perf_counter() - start)
        done += sum(r.finish_reason is not None for r in responses)
    gen.close()
    return float(np.mean(times[SKIP:SKIP + TIMED]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2-small")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--compile-decode", choices=["auto", "on", "off"], default="auto",
                    help="our engine's engine.compile_decode (auto: on a GPU only)")
    args = ap.parse_args()
    compile_decode = {"auto": None, "on": True, "off": False}[args.compile_decode]
    loaded = load_model(f"dummy:{args.model}", dtype=args.dtype)
    ours = Qwen2Model(loaded.config, loaded.weights, dtype=args.dtype)
    peer = mlx_lm_model(loaded.config, loaded.weights)
    rng = np.random.default_rng(0)
    rows, device = [], device_name()
    for batch in args.batch:
        prompts = rng.integers(0, loaded.config.vocab_size, (batch, PROMPT)).tolist()
        pairs = [(ours_steps(ours, prompts, compile_decode), mlx_lm_steps(peer, prompts))
                 for _ in range(args.reps)]
        for i, (a, b) in enumerate(pairs):
            print(f"{args.model} {args.dtype} batch {batch} rep {i}: ours {a * 1e3:8.2f} ms/step"
                  f" | mlx-lm {b * 1e3:8.2f} ms/step | ours/mlx-lm speed {b / a:.2f}x", flush=True)
        ratios = [b / a for a, b in pairs]
        print(f"  median speed ratio {np.median(ratios):.2f}x (range {min(ratios):.2f}-"
              f"{max(ratios):.2f}x)", flush=True)
        rows.append({"model": args.model, "dtype": args.dtype, "batch": batch,
                     "compile_decode": args.compile_decode, "prompt_len": PROMPT,
                     "ours_ms_per_step": [round(a * 1e3, 3) for a, _ in pairs],
                     "mlx_lm_ms_per_step": [round(b * 1e3, 3) for _, b in pairs],
                     "ratio_vs_mlx_lm": round(float(np.median(ratios)), 3), "device": device})
    out = RESULTS / (f"decode_step_{args.model}_{args.dtype}_{device_kind()}"
                     f"_compile-{args.compile_decode}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
