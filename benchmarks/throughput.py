"""Generation throughput: our engine vs mlx-lm (and transformers on a GPU), same weights.

    python benchmarks/throughput.py --model qwen2-0.5b --dtype float32 --batch 1 8 \
        --prompt-len 64 --gen-len 32

For each batch size every engine gets `batch` random prompts of `prompt_len` tokens, all at
once, and generates exactly `gen_len` tokens for each (EOS ignored); the time is wall time
including prefill, after one warm-up run. With `--repeats N` the engines take turns N times
and each reports its median (every sample goes to the JSON): runs on a shared machine drift.
Prints a table with tokens/s (generated tokens / seconds) and our ratio to each peer, and
writes the rows as JSON to benchmarks/results/.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import testbed  # noqa: E402,F401  (fast BLAS before mlx)
import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.peers import mlx_lm_runner, transformers_runner  # noqa: E402
from testbed import blas  # noqa: E402
from testbed.engine.engine import Engine  # noqa: E402
from testbed.engine.kv_pool import PagedKVPool  # noqa: E402
from testbed.engine.mlx_executor import MLXExecutor  # noqa: E402
from testbed.kv import make_kv_manager  # noqa: E402
from testbed.model.qwen2 import Qwen2Model  # noqa: E402
from testbed.model.sampling import sample_sequences  # noqa: E402
from testbed.request import Request, SamplingParams  # noqa: E402
from testbed.sched import make_scheduler  # noqa: E402
from testbed.weights import load_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def ours_runner(model: Qwen2Model, block_size: int = 16, **sched):
    def run(prompts: list[list[int]], gen_len: int) -> float:
        longest = max(len(p) for p in prompts) + gen_len
        blocks = len(prompts) * -(-longest // block_size) + 8
        kv = make_kv_manager("paged", blocks, block_size)
        scheduler = make_scheduler("vllm", {"max_num_seqs": len(prompts),
                                            "max_num_batched_tokens": sched.get("budget", 8192),
                                            "max_model_len": longest}, kv)
        pool = PagedKVPool(model.config, blocks, block_size, model.dtype)
        engine = Engine(scheduler, MLXExecutor(model, pool, sample_sequences),
                        overlap=sched.get("overlap", True))
        start = time.perf_counter()
        for i, p in enumerate(prompts):
            engine.add_request(Request(str(i), 0.0, len(p), gen_len, prompt_token_ids=p,
                                       sampling=SamplingParams(ignore_eos=True)))
        while engine.has_unfinished:
            engine.step()
        return time.perf_counter() - start
    return run


def device_kind() -> str:
    """"gpu" or "cpu": the suffix of a result file's name."""
    return "gpu" if mx.default_device() == mx.gpu else "cpu"


def device_name() -> str:
    dev = mx.default_device()
    if dev == mx.gpu:
        try:
            return f"gpu: {mx.device_info().get('device_name', 'unknown')}"
        except Exception:
            return "gpu"
    return f"cpu: {platform.processor() or platform.machine()} ({blas.status()})"


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2-0.5b", help="named config for dummy weights")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--gen-len", type=int, default=32)
    ap.add_argument("--engines", default="ours,mlx-lm,transformers")
    ap.add_argument("--budget", type=int, default=8192, help="our token budget per step")
    ap.add_argument("--no-overlap", action="store_true", help="run our steps one at a time")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per engine (median)")
    ap.add_argument("--out", default=None, help="JSON file (default: results/<name>.json)")
    args = ap.parse_args(argv)

    loaded = load_model(f"dummy:{args.model}", dtype=args.dtype)
    wanted = args.engines.split(",")
    runners = {}
    if "ours" in wanted:
        runners["ours"] = ours_runner(Qwen2Model(loaded.config, loaded.weights, dtype=args.dtype),
                                      budget=args.budget, overlap=not args.no_overlap)
    if "mlx-lm" in wanted:
        runners["mlx-lm"] = mlx_lm_runner(loaded.config, loaded.weights, args.dtype)
    if "transformers" in wanted:
        hf = transformers_runner(loaded.config, loaded.weights, args.dtype)
        if hf is not None:
            runners["transformers"] = hf
    rng = np.random.default_rng(0)
    rows, device = [], device_name()
    for batch in args.batch:
        prompts = rng.integers(0, loaded.config.vocab_size, (batch, args.prompt_len)).tolist()
        for run in runners.values():
            run(prompts, 8)  # warm-up at this batch's shapes: kernel compilation, weights
        samples = {name: [] for name in runners}
        for _ in range(args.repeats):  # engines take turns, so drift hits them alike
            for name, run in runners.items():
                samples[name].append(batch * args.gen_len / run(prompts, args.gen_len))
        tok_s = {name: float(np.median(values)) for name, values in samples.items()}
        for name, value in tok_s.items():
            row = {"engine": name, "model": args.model, "dtype": args.dtype, "batch": batch,
                   "prompt_len": args.prompt_len, "gen_len": args.gen_len,
                   "tok_per_s": round(value, 2), "repeats": args.repeats,
                   "tok_per_s_samples": [round(v, 2) for v in samples[name]], "device": device}
            for peer in tok_s:
                if peer != "ours" and "ours" in tok_s and name == "ours":
                    row[f"ratio_vs_{peer.replace('-', '_')}"] = round(tok_s["ours"] / tok_s[peer], 3)
            rows.append(row)
        spread = {n: f" ({min(v):.0f}-{max(v):.0f})" if len(v) > 1 else "" for n, v in samples.items()}
        print(" | ".join([f"batch {batch:4d}"] + [f"{n} {v:9.1f}{spread[n]} tok/s"
                                                  for n, v in tok_s.items()])
              + "".join(f" | ours/{p} {tok_s['ours'] / v:.2f}x" for p, v in tok_s.items()
                        if p != "ours" and "ours" in tok_s), flush=True)
    out = Path(args.out) if args.out else RESULTS / (
        f"throughput_{args.model}_{args.dtype}_{device_kind()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    print(f"wrote {out}")
    return rows


if __name__ == "__main__":
    main()
