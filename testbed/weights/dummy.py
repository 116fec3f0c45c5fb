"""Random weights for a named Qwen2 shape (as vLLM's `load_format=dummy`): for timing and
memory studies that need the real tensor sizes but no meaningful text."""
from __future__ import annotations

import mlx.core as mx

from testbed.model.config import named_config
from testbed.tokenizer import Tokenizer, byte_level_tokenizer
from testbed.weights.layout import expected_shapes, is_norm
from testbed.weights.loaded import LoadedModel, mlx_dtype

WEIGHT_STD = 0.02


def dummy_weights(name: str, dtype: str = "float32", seed: int = 0) -> dict[str, mx.array]:
    """Normal(0, 0.02) weights and biases, RMSNorm weights 1, generated on the default device."""
    config, target = named_config(name), mlx_dtype(dtype)
    shapes = expected_shapes(config)
    keys = mx.random.split(mx.random.key(seed), len(shapes))
    weights = {}
    for key, (tensor, shape) in zip(keys, shapes.items()):
        if is_norm(tensor):
            weights[tensor] = mx.ones(shape, dtype=target)
        else:
            weights[tensor] = mx.random.normal(shape, dtype=target, scale=WEIGHT_STD, key=key)
        mx.eval(weights[tensor])
    return weights


def dummy_tokenizer(name: str) -> Tokenizer:
    """A byte-level tokenizer over the named config's vocabulary (ids 0-255 are bytes, 256 is
    EOS), so `generate` runs end to end on random weights."""
    config = named_config(name)
    return byte_level_tokenizer(config.vocab_size, source=f"dummy {config.name}")


def load_dummy(name: str, dtype: str = "float32", seed: int = 0) -> LoadedModel:
    """A named config with random weights and the byte-level `dummy_tokenizer`."""
    config = named_config(name)
    tokenizer = dummy_tokenizer(name)
    return LoadedModel(config, dummy_weights(name, dtype, seed), tokenizer,
                       tokenizer.eos_token_ids, f"dummy {config.name}",
                       {"eos_token_id": list(tokenizer.eos_token_ids)})
