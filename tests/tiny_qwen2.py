"""Tiny random Qwen2 checkpoints built with Hugging Face transformers, for model tests."""
from __future__ import annotations

from pathlib import Path

import mlx.core as mx

from testbed.model.config import ModelConfig
from testbed.model.qwen2 import expected_shapes
from testbed.weights import load_model


def build_tiny_qwen2(directory: Path, *, tie: bool, seed: int = 0):
    """A 2-layer GQA Qwen2 (4 heads, 2 KV heads) with random non-zero biases and norm
    weights, saved in float32 with `save_pretrained`; returns the torch model."""
    import torch  # imported here: tests that need no transformers oracle start faster
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=500, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, rope_theta=10000.0, rms_norm_eps=1e-6,
                         tie_word_embeddings=tie, initializer_range=0.1,
                         bos_token_id=None, eos_token_id=None, pad_token_id=None)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(torch.randn_like(param) * 0.2)
    model.save_pretrained(directory)
    return model


def load_tiny(directory: Path) -> tuple[ModelConfig, dict[str, mx.array]]:
    """The checkpoint's config and flat Hugging Face-named weights, through the loader."""
    loaded = load_model(str(directory))
    return loaded.config, loaded.weights


def random_weights(config: ModelConfig, seed: int = 0) -> dict[str, mx.array]:
    """Random weights of every tensor the config needs (norm weights near 1)."""
    key = mx.random.key(seed)
    weights = {}
    for name, shape in expected_shapes(config).items():
        key, sub = mx.random.split(key)
        noise = mx.random.normal(shape, key=sub)
        weights[name] = 1 + 0.1 * noise if "norm" in name else 0.1 * noise
    return weights
