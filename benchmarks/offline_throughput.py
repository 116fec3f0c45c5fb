"""Offline throughput as nano-vllm's bench.py measures it: 256 requests with prompt and
output lengths uniform in 100..1024, all submitted at once, EOS ignored; generated tokens per
second of wall time, ours vs mlx-lm's BatchGenerator on the same weights.

    python benchmarks/offline_throughput.py --model qwen2-0.5b --dtype bfloat16
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import testbed  # noqa: E402,F401
import numpy as np  # noqa: E402

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


def run_ours(model: Qwen2Model, prompts, outputs, max_seqs: int, budget: int) -> float:
    bs = 16
    blocks = sum(-(-(len(p) + o) // bs) for p, o in zip(prompts, outputs)) + 8
    kv = make_kv_manager("paged", blocks, bs)
    sched = make_scheduler("vllm", {"max_num_seqs": max_seqs, "max_num_batched_tokens": budget,
                                    "max_model_len": 4096}, kv)
    engine = Engine(sched, MLXExecutor(model, PagedKVPool(model.config, blocks, bs, model.dtype),
                                       sample_sequences), overlap=True)
    start = time.perf_counter()
    for i, (p, o) in enumerate(zip(prompts, outputs)):
        engine.add_request(Request(str(i), 0.0, len(p), o, prompt_token_ids=p,
                                   sampling=SamplingParams(ignore_eos=True)))
    while engine.has_unfinished:
        engine.step()
    return time.perf_counter() - start


def run_mlx_lm(config, weights, prompts, outputs, max_seqs: int) -> float:
    from benchmarks.peers import batch_generator_seconds, mlx_lm_model

    return batch_generator_seconds(mlx_lm_model(config, weights), prompts, list(outputs),
                                   completion_batch_size=max_seqs, prefill_batch_size=8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2-0.5b")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--min-len", type=int, default=100)
    ap.add_argument("--max-len", type=int, default=1024)
    ap.add_argument("--max-seqs", type=int, default=256)
    ap.add_argument("--budget", type=int, default=16384)
    ap.add_argument("--engines", default="ours,mlx-lm")
    args = ap.parse_args()
    loaded = load_model(f"dummy:{args.model}", dtype=args.dtype)
    rng = np.random.default_rng(0)
    n = args.requests
    prompts = [rng.integers(0, loaded.config.vocab_size, int(rng.integers(args.min_len, args.max_len + 1))).tolist()
               for _ in range(n)]
    outputs = [int(x) for x in rng.integers(args.min_len, args.max_len + 1, n)]
    total = sum(outputs)
    results = {}
    if "ours" in args.engines:
        model = Qwen2Model(loaded.config, loaded.weights, dtype=args.dtype)
        run_ours(model, prompts[:4], [8] * 4, args.max_seqs, args.budget)  # warm-up
        results["ours"] = total / run_ours(model, prompts, outputs, args.max_seqs, args.budget)
    if "mlx-lm" in args.engines:
        run_mlx_lm(loaded.config, loaded.weights, prompts[:4], [8] * 4, args.max_seqs)
        results["mlx-lm"] = total / run_mlx_lm(loaded.config, loaded.weights, prompts, outputs,
                                               args.max_seqs)
    line = " | ".join(f"{k} {v:,.0f} tok/s" for k, v in results.items())
    if len(results) == 2:
        line += f" | ours/mlx-lm {results['ours'] / results['mlx-lm']:.2f}x"
    print(f"offline {args.model} {args.dtype}: {n} requests, {total} output tokens | {line}")
    rows = [{"engine": k, "model": args.model, "dtype": args.dtype, "requests": n,
             "output_tokens": total, "tok_per_s": round(v, 1), "device": device_name(),
             **({"ratio_vs_mlx_lm": round(results["ours"] / results["mlx-lm"], 3)}
                if k == "ours" and "mlx-lm" in results else {})} for k, v in results.items()]
    out = RESULTS / f"offline_{args.model}_{args.dtype}_{device_kind()}.json"
    out.write_text(json.dumps(rows, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
