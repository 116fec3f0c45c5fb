"""The GPU comparison: our engine vs mlx-lm's BatchGenerator and transformers' `generate`,
dummy-weight Qwen2-0.5B and Qwen2-7B in bfloat16, 512-token prompts, 256 generated tokens,
batch 1, 16, 64 and 256, wall time including prefill; the engines take turns `--repeats`
times (default 3) and each reports its median. One table, one JSON
(`benchmarks/results/gpu_throughput.json`), every ratio measured in this run.

    python benchmarks/gpu_throughput.py [--models qwen2-0.5b qwen2-7b] [--batch 1 16 64 256]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import throughput  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["qwen2-0.5b", "qwen2-7b"])
    ap.add_argument("--batch", nargs="+", default=["1", "16", "64", "256"])
    ap.add_argument("--prompt-len", default="512")
    ap.add_argument("--gen-len", default="256")
    ap.add_argument("--engines", default="ours,mlx-lm,transformers")
    ap.add_argument("--repeats", default="3")
    ap.add_argument("--out", default=str(throughput.RESULTS / "gpu_throughput.json"))
    args = ap.parse_args()
    rows = []
    for model in args.models:
        rows += throughput.main(["--model", model, "--dtype", "bfloat16", "--batch", *args.batch,
                                 "--prompt-len", args.prompt_len, "--gen-len", args.gen_len,
                                 "--engines", args.engines, "--repeats", args.repeats,
                                 "--out", str(Path(args.out).with_suffix(f".{model}.json"))])
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print("\n| model | batch | engine | tok/s | ours / engine |\n|---|---|---|---|---|")
    ours = {(r["model"], r["batch"]): r["tok_per_s"] for r in rows if r["engine"] == "ours"}
    for r in rows:
        ratio = ours[(r["model"], r["batch"])] / r["tok_per_s"]
        print(f"| {r['model']} | {r['batch']} | {r['engine']} | {r['tok_per_s']:,.0f} | {ratio:.2f}x |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
