"""Where a step's time goes in our engine: host (plan -> arrays -> graph) vs device (eval),
per step kind, for one batch of equal prompts.

    python benchmarks/profile_steps.py --model qwen2-0.5b --dtype bfloat16 --batch 64 \
        --prompt-len 512 --gen-len 64 [--kernel-table 16] [--small-matmul-rows 64] \
        [--rope-kernel off] [--split-context on]

`--kernel-table N` (NVIDIA GPU, needs torch) records the last N decode steps with CUPTI
through `torch.profiler`, which sees MLX's kernels as well, and prints each kernel's device
time and launches per step. `--small-matmul-rows` moves the row limit under which
projections take our tensor-core kernel instead of cuBLAS (`cuda_matmul.MAX_ROWS`);
`--rope-kernel on|off` switches the Q/K rotary kernel (`cuda_rope.ENABLED`) and
`--split-context on|off` the long-context split of the decode attention
(`cuda_paged_attention.SPLIT_CONTEXT`). MLX's own CUDA
settings (`MLX_MAX_OPS_PER_BUFFER`, `MLX_USE_CUDA_GRAPHS`, ...) are read once per process:
set them in the environment of the run.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import testbed  # noqa: E402,F401
import numpy as np  # noqa: E402

from testbed.engine import cuda_paged_attention  # noqa: E402
from testbed.engine.engine import Engine  # noqa: E402
from testbed.engine.kv_pool import PagedKVPool  # noqa: E402
from testbed.engine.mlx_executor import MLXExecutor  # noqa: E402
from testbed.kv import make_kv_manager  # noqa: E402
from testbed.model import cuda_matmul, cuda_rope  # noqa: E402
from testbed.model.qwen2 import Qwen2Model  # noqa: E402
from testbed.model.sampling import sample_sequences  # noqa: E402
from testbed.request import Request, SamplingParams  # noqa: E402
from testbed.sched import make_scheduler  # noqa: E402
from testbed.weights import load_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2-0.5b")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--kernels", default="fast")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--gen-len", type=int, default=64)
    ap.add_argument("--overlap", action="store_true")
    ap.add_argument("--kernel-table", type=int, default=0, metavar="N",
                    help="per-kernel device time over the last N decode steps (CUPTI)")
    ap.add_argument("--small-matmul-rows", type=int, default=None)
    ap.add_argument("--rope-kernel", choices=["on", "off"], default=None)
    ap.add_argument("--split-context", choices=["on", "off"], default=None)
    args = ap.parse_args()
    if args.small_matmul_rows is not None:
        cuda_matmul.MAX_ROWS = args.small_matmul_rows
    if args.rope_kernel is not None:
        cuda_rope.ENABLED = args.rope_kernel == "on"
    if args.split_context is not None:
        cuda_paged_attention.SPLIT_CONTEXT = args.split_context == "on"
    loaded = load_model(f"dummy:{args.model}", dtype=args.dtype)
    model = Qwen2Model(loaded.config, loaded.weights, dtype=args.dtype, kernels=args.kernels)
    bs = 16
    blocks = args.batch * -(-(args.prompt_len + args.gen_len) // bs) + 8
    kv = make_kv_manager("paged", blocks, bs)
    sched = make_scheduler("vllm", {"max_num_seqs": args.batch, "max_num_batched_tokens": 8192,
                                    "max_model_len": args.prompt_len + args.gen_len}, kv)
    engine = Engine(sched, MLXExecutor(model, PagedKVPool(model.config, blocks, bs, args.dtype),
                                       sample_sequences), overlap=args.overlap)
    rng = np.random.default_rng(0)
    for i in range(args.batch):
        p = rng.integers(0, loaded.config.vocab_size, args.prompt_len).tolist()
        engine.add_request(Request(str(i), 0.0, len(p), args.gen_len, prompt_token_ids=p,
                                   sampling=SamplingParams(ignore_eos=True)))
    rows = []
    profiler = None
    start = time.perf_counter()
    while engine.has_unfinished:
        decodes = sum(1 for r in rows if r[0] == 0)
        if args.kernel_table and profiler is None and decodes == args.gen_len - 1 - args.kernel_table:
            profiler = _start_cupti()
        t0 = time.perf_counter()
        out = engine.step()
        rows.append((out.features.n_prefill_tokens, out.features.n_decode_seqs,
                     out.result.host_seconds, out.result.device_seconds,
                     time.perf_counter() - t0))
    total = time.perf_counter() - start
    r = np.array(rows, dtype=float)
    decode = r[(r[:, 0] == 0)]
    prefill = r[(r[:, 0] > 0)]
    print(f"{args.model} {args.dtype} batch {args.batch}: {len(r)} steps, {total:.2f} s, "
          f"{args.batch * args.gen_len / total:.1f} tok/s")
    for name, part in (("prefill", prefill), ("decode", decode)):
        if len(part):
            # Medians: a step that traces or JIT-compiles a kernel costs 100x a steady one.
            med = np.median(part, axis=0) * 1e3
            print(f"  {name:7s} steps {len(part):4d}  median total {med[4]:8.2f} ms"
                  f" (p90 {np.percentile(part[:, 4], 90) * 1e3:.2f}, sum {part[:, 4].sum():.2f} s)"
                  f"  executor host {med[2]:7.2f} ms  device {med[3]:7.2f} ms")
    if profiler is not None:
        profiler.__exit__(None, None, None)
        _print_kernels(profiler, args.kernel_table)


def _start_cupti():
    from torch.profiler import ProfilerActivity, profile
    profiler = profile(activities=[ProfilerActivity.CUDA])
    profiler.__enter__()
    return profiler


def _print_kernels(profiler, steps: int, top: int = 20) -> None:
    events = [(e.key, getattr(e, "device_time_total", 0.0), e.count)
              for e in profiler.key_averages()]
    events = [e for e in events if e[1] > 0]
    total = sum(t for _, t, _ in events)
    print(f"  kernels over the last {steps} decode steps: {total / steps / 1e3:.2f} ms of device "
          f"time per step, {sum(c for _, _, c in events) / steps:.0f} launches per step")
    for key, t_us, count in sorted(events, key=lambda e: -e[1])[:top]:
        print(f"  {t_us / steps:9.1f} us/step {count / steps:6.1f}/step  {key[:100]}")


if __name__ == "__main__":
    main()
