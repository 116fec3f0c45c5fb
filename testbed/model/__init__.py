"""The raw-MLX Qwen2 model: kernels, the decoder, a contiguous KV cache and sampling."""
from testbed.model.config import ModelConfig, named_config
from testbed.model.kernels import KERNELS, attention
from testbed.model.kv_cache import ContiguousKVCache
from testbed.model.qwen2 import AttentionFn, Qwen2Model, expected_shapes, validate_weights
from testbed.model.sampling import sample, sample_sequences

__all__ = ["ModelConfig", "named_config", "KERNELS", "attention", "ContiguousKVCache",
           "AttentionFn", "Qwen2Model", "expected_shapes", "validate_weights", "sample",
           "sample_sequences"]
