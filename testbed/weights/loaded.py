"""What every weight source produces: config, weights under Hugging Face names, tokenizer."""
from __future__ import annotations

from dataclasses import dataclass, field

import mlx.core as mx

from testbed.model.config import ModelConfig
from testbed.tokenizer import Tokenizer

DTYPES: dict[str, mx.Dtype] = {"float32": mx.float32, "float16": mx.float16,
                               "bfloat16": mx.bfloat16}


def mlx_dtype(name: str) -> mx.Dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r} is not supported; choose one of: {', '.join(DTYPES)}")
    return DTYPES[name]


@dataclass(slots=True)
class LoadedModel:
    config: ModelConfig
    weights: dict[str, mx.array]  # Hugging Face names; linear weights [out, in]
    tokenizer: Tokenizer | None
    eos_token_ids: tuple[int, ...]
    source: str                   # e.g. "HF dir /x", "GGUF file y.gguf (Q4_K_M)", "dummy qwen2-0.5b"
    generation_config: dict = field(default_factory=dict)
