"""`testbed generate`: continue one or more prompts with the raw-MLX Qwen2 model.

The continuation streams to stdout (with several prompts, each completion is printed when it
finishes, under a header); prefill and decode speeds, and which BLAS MLX uses, go to stderr.
"""
from __future__ import annotations

import argparse
import platform
import sys

import mlx.core as mx

from testbed import blas
from testbed.generate import GenerationResult, TokenEvent, generate
from testbed.model.kernels import KERNELS
from testbed.model.qwen2 import DTYPES, Qwen2Model
from testbed.request import SamplingParams
from testbed.weights import load_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="HF directory, .gguf file, HF repo id, or dummy:<config name>")
    parser.add_argument("--prompt", action="append", required=True,
                        help="prompt text; repeat for a batch of prompts")
    parser.add_argument("--chat", action="store_true",
                        help="wrap each prompt as a user message in the model's chat template")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0, help="0 = off")
    parser.add_argument("--seed", type=int, default=None,
                        help="sampling seed; prompt i uses seed + i (default: unseeded)")
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--ignore-eos", action="store_true")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32")
    parser.add_argument("--kernels", choices=KERNELS, default="fast")
    parser.add_argument("--quant-bits", type=int, choices=(4, 8), default=None)
    parser.add_argument("--quant-group-size", type=int, choices=(64, 128), default=64)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except ValueError as e:
        print(f"testbed generate: error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    loaded = load_model(args.model, dtype=args.dtype)
    tokenizer = loaded.tokenizer
    if tokenizer is None:
        raise ValueError(f"{loaded.source}: has no tokenizer, so text prompts cannot be encoded")
    texts = args.prompt
    if args.chat:
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": t}]) for t in texts]
    prompts = [tokenizer.encode(t) for t in texts]
    model = Qwen2Model(loaded.config, loaded.weights, dtype=args.dtype, kernels=args.kernels,
                       quant_bits=args.quant_bits, quant_group_size=args.quant_group_size)
    sampling = [SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                               seed=None if args.seed is None else args.seed + i,
                               ignore_eos=args.ignore_eos) for i in range(len(prompts))]
    show = _Printer(len(prompts))
    result = generate(model, prompts, sampling, max_tokens=args.max_tokens,
                      eos_token_ids=loaded.eos_token_ids, stop=args.stop, tokenizer=tokenizer,
                      on_token=show)
    _report(result, loaded.source, args)
    return 0


class _Printer:
    """Streams a single completion token by token; with several, prints each as it ends."""

    def __init__(self, n_prompts: int):
        self.n_prompts = n_prompts
        self.texts = [""] * n_prompts

    def __call__(self, event: TokenEvent) -> None:
        if self.n_prompts == 1:
            sys.stdout.write(event.text)
            if event.finish_reason is not None:
                sys.stdout.write("\n")
            sys.stdout.flush()
            return
        self.texts[event.index] += event.text
        if event.finish_reason is not None:
            print(f"--- completion {event.index} ({event.finish_reason}) ---")
            print(self.texts[event.index], flush=True)


def _report(result: GenerationResult, source: str, args: argparse.Namespace) -> None:
    s = result.stats
    quant = f", {args.quant_bits}-bit/{args.quant_group_size}" if args.quant_bits else ""
    lines = [
        f"model: {source} ({args.dtype}, {args.kernels} kernels{quant})",
        f"prefill: {s.prompt_tokens} tokens in {s.prefill_seconds:.3f} s = "
        f"{s.prefill_tokens_per_s:.1f} tokens/s",
        f"decode: {s.decode_tokens} tokens in {s.decode_steps} steps, {s.decode_seconds:.3f} s = "
        f"{s.decode_tokens_per_s:.1f} tokens/s (batch {len(result.completions)})",
    ]
    if sys.platform == "linux" and mx.default_device().type == mx.DeviceType.cpu:
        lines.append(f"BLAS (MLX CPU backend, {platform.machine()}): {blas.status()}")
    print("\n".join(lines), file=sys.stderr)
