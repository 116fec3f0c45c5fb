"""Time the pieces of one engine step on the current device (diagnostics for tuning).

    python benchmarks/op_timings.py --model qwen2-0.5b --dtype bfloat16 --tokens 8192 --seqs 16
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import testbed  # noqa: E402,F401
import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from testbed.model.config import named_config  # noqa: E402
from testbed.model.kernels import attention, rope  # noqa: E402

DT = {"bfloat16": mx.bfloat16, "float16": mx.float16, "float32": mx.float32}


def timed(name: str, fn, reps: int = 10) -> float:
    mx.eval(fn())
    t = time.perf_counter()
    for _ in range(reps):
        mx.eval(fn())
    ms = (time.perf_counter() - t) / reps * 1e3
    print(f"  {name:44s} {ms:9.3f} ms", flush=True)
    return ms


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2-0.5b")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--seqs", type=int, default=16)
    args = ap.parse_args()
    c, dt = named_config(args.model), DT[args.dtype]
    T, S = args.tokens, args.seqs
    L = T // S
    H, KV, D, hid = c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.hidden_size
    print(f"{args.model} {args.dtype}: {T} tokens as {S} sequences of {L}")
    x = mx.random.normal((T, hid)).astype(dt)
    w = mx.random.normal((c.intermediate_size, hid)).astype(dt) * 0.02
    q = mx.random.normal((T, H, D)).astype(dt)
    k = mx.random.normal((T, KV, D)).astype(dt)
    pos = mx.array(np.tile(np.arange(L), S).astype(np.int32))
    mx.eval(x, w, q, k, pos)
    timed("matmul x @ W_up.T", lambda: x @ w.T)
    timed("rope fast (offset array)", lambda: rope(q, pos, c.rope_theta, "fast"))
    timed("rope reference", lambda: rope(q, pos, c.rope_theta, "reference"))
    bs = 16
    nb = S * -(-L // bs) + 8
    pool = mx.zeros((nb, bs, KV, D), dtype=dt)
    slots = mx.array(np.arange(T, dtype=np.int32))
    mx.eval(pool)

    def write():
        flat = pool.reshape(nb * bs, KV, D)
        flat[slots] = k
        return flat
    timed("pool scatter of all tokens", write)
    table = mx.array(np.arange(-(-L // bs), dtype=np.int32))[None]
    timed("gather one sequence's blocks", lambda: pool[table])
    qs = mx.random.normal((1, H, L, D)).astype(dt)
    ks = mx.random.normal((1, KV, L, D)).astype(dt)
    mx.eval(qs, ks)
    timed("sdpa causal one sequence (fast)", lambda: attention(qs, ks, ks, "causal", D ** -0.5, "fast"))
    timed("sdpa causal one sequence (reference)", lambda: attention(qs, ks, ks, "causal", D ** -0.5, "reference"))
    qb = mx.random.normal((S, H, L, D)).astype(dt)
    kb = mx.random.normal((S, KV, L, D)).astype(dt)
    mx.eval(qb, kb)
    timed(f"sdpa causal batched [{S} seqs] (fast)", lambda: attention(qb, kb, kb, "causal", D ** -0.5, "fast"))
    qd = mx.random.normal((64, H, 1, D)).astype(dt)
    kd = mx.random.normal((64, KV, 576, D)).astype(dt)
    mask = mx.ones((64, 1, 1, 576), dtype=mx.bool_)
    mx.eval(qd, kd, mask)
    timed("decode sdpa 64 x 576 keys, bool mask", lambda: attention(qd, kd, kd, mask, D ** -0.5, "fast"))
    timed("decode sdpa 64 x 576 keys, no mask", lambda: attention(qd, kd, kd, None, D ** -0.5, "fast"))
    tiny = mx.ones((4,))
    timed("eval of a tiny op (launch+sync)", lambda: tiny + 1, reps=100)


if __name__ == "__main__":
    main()
