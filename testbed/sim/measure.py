"""Measure this machine's matmul FLOP/s and memory bandwidth through MLX, to write a hardware
profile for it (`conf/hardware/*.yaml`).

`python -m testbed.sim.measure [--device cpu|gpu]` prints the numbers and a profile draft.
Matmul: best of several square `a @ b` products (2 n^3 FLOPs each). Bandwidth, two ways:
an elementwise copy of a large array (`x + 0` reads and writes every byte once, so 2 x size
bytes move), and a matrix-vector product `x @ W` with one row (a decode step's pattern: W is
streamed once). Best of several runs, because other work on a shared machine only ever slows
a run down.
"""
from __future__ import annotations

import argparse
import time

import testbed  # noqa: F401  (loads the fast BLAS before mlx.core)
import mlx.core as mx


def _best_seconds(fn, repeats: int) -> float:
    mx.eval(fn())  # warm up (allocation, kernel compilation)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        mx.eval(fn())
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_flops(n: int = 2048, dtype: str = "float32", repeats: int = 5) -> float:
    """FLOP/s of an n x n x n matrix product in `dtype`."""
    dt = getattr(mx, dtype)
    a = mx.random.normal((n, n)).astype(dt)
    b = mx.random.normal((n, n)).astype(dt)
    mx.eval(a, b)
    return 2 * n**3 / _best_seconds(lambda: a @ b, repeats)


def copy_bandwidth(nbytes: int = 1 << 30, repeats: int = 5) -> float:
    """Bytes/s moved by an elementwise copy of an `nbytes` float32 array (read + write)."""
    x = mx.zeros((nbytes // 4,), dtype=mx.float32)
    mx.eval(x)
    return 2 * nbytes / _best_seconds(lambda: x + 0.0, repeats)


def gemv_bandwidth(k: int = 8192, n: int = 16384, dtype: str = "float32", repeats: int = 5) -> float:
    """Bytes/s of weights streamed by a (1 x k) @ (k x n) product in `dtype`."""
    dt = getattr(mx, dtype)
    w = mx.random.normal((k, n)).astype(dt)
    x = mx.random.normal((1, k)).astype(dt)
    mx.eval(w, x)
    return w.nbytes / _best_seconds(lambda: x @ w, repeats)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--n", type=int, default=2048, help="matmul size")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float16", "bfloat16"])
    parser.add_argument("--gib", type=float, default=1.0, help="size of the copied array, GiB")
    args = parser.parse_args(argv)
    mx.set_default_device(getattr(mx, args.device))
    print(f"# MLX {mx.__version__}, device {args.device}, BLAS: {testbed.blas.status()}")
    for dtype in args.dtypes:
        print(f"# matmul {args.n}^3 {dtype}: {matmul_flops(args.n, dtype) / 1e9:.1f} GFLOP/s")
    bw = copy_bandwidth(int(args.gib * (1 << 30)))
    print(f"# copy {args.gib:g} GiB float32 (x + 0): {bw / 1e9:.1f} GB/s")
    print(f"# matrix-vector 8192 x 16384 float32: {gemv_bandwidth() / 1e9:.1f} GB/s of weights")


if __name__ == "__main__":
    main()
