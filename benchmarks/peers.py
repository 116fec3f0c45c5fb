"""Peer engines for side-by-side throughput runs: mlx-lm's BatchGenerator and Hugging Face
transformers' `generate`, fed the very same weights as our engine.

Each runner takes the HF-named weight dict, the model config and a batch of prompts and
returns the wall time of generating `gen_len` tokens for every prompt, prefill included.
"""
from __future__ import annotations

import time

import mlx.core as mx
import numpy as np

from testbed.model.config import ModelConfig


def mlx_lm_model(config: ModelConfig, weights: dict[str, mx.array]):
    """mlx-lm's own Qwen2 module holding our weights."""
    from mlx_lm.models import qwen2

    args = qwen2.ModelArgs(model_type="qwen2", hidden_size=config.hidden_size,
                           num_hidden_layers=config.num_hidden_layers,
                           intermediate_size=config.intermediate_size,
                           num_attention_heads=config.num_attention_heads,
                           rms_norm_eps=config.rms_norm_eps, vocab_size=config.vocab_size,
                           num_key_value_heads=config.num_key_value_heads,
                           max_position_embeddings=config.max_position_embeddings,
                           rope_theta=config.rope_theta,
                           tie_word_embeddings=config.tie_word_embeddings)
    model = qwen2.Model(args)
    model.load_weights(list(weights.items()), strict=True)
    mx.eval(model.parameters())
    return model


def mlx_lm_runner(config: ModelConfig, weights: dict[str, mx.array], dtype: str):
    """mlx-lm's BatchGenerator on our weights; returns run(prompts, gen_len) -> seconds."""
    model = mlx_lm_model(config, weights)

    def run(prompts: list[list[int]], gen_len: int) -> float:
        return batch_generator_seconds(model, prompts, [gen_len] * len(prompts),
                                       completion_batch_size=len(prompts),
                                       prefill_batch_size=min(len(prompts), 64))

    return run


def batch_generator_seconds(model, prompts: list[list[int]], max_tokens: list[int],
                            completion_batch_size: int, prefill_batch_size: int) -> float:
    """Wall time of mlx-lm's BatchGenerator generating `max_tokens[i]` tokens for prompt i,
    all inserted at once, prefill included."""
    from mlx_lm.generate import BatchGenerator

    gen = BatchGenerator(model, max_tokens=max(max_tokens),
                         completion_batch_size=completion_batch_size,
                         prefill_batch_size=prefill_batch_size)
    start = time.perf_counter()
    gen.insert(prompts, max_tokens=list(max_tokens))
    finished = 0
    while finished < len(prompts):
        for r in gen.next_generated():
            finished += r.finish_reason is not None
    seconds = time.perf_counter() - start
    gen.close()
    return seconds


def transformers_runner(config: ModelConfig, weights: dict[str, mx.array], dtype: str):
    """transformers' Qwen2ForCausalLM with our weights on torch's best device, or None if
    torch sees no GPU (a CPU transformers run says nothing about serving speed)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if not torch.cuda.is_available():
        return None
    tdtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    hf_config = Qwen2Config(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                            intermediate_size=config.intermediate_size,
                            num_hidden_layers=config.num_hidden_layers,
                            num_attention_heads=config.num_attention_heads,
                            num_key_value_heads=config.num_key_value_heads,
                            max_position_embeddings=config.max_position_embeddings,
                            rope_theta=config.rope_theta, rms_norm_eps=config.rms_norm_eps,
                            tie_word_embeddings=config.tie_word_embeddings)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(hf_config).to(tdtype).eval()
    state = {k: torch.from_numpy(np.array(v.astype(mx.float32))).to("cuda", tdtype)
             for k, v in weights.items()}
    model.load_state_dict(state, strict=False)  # tied: lm_head shares embed_tokens

    def run(prompts: list[list[int]], gen_len: int) -> float:
        ids = torch.tensor(prompts, device="cuda")
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=gen_len,
                           min_new_tokens=gen_len, do_sample=False, pad_token_id=0)
        torch.cuda.synchronize()
        return time.perf_counter() - start

    return run
