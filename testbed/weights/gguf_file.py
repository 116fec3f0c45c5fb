"""Load a Qwen2 GGUF file (llama.cpp's format): config and tokenizer from its metadata,
weights dequantized with our own numpy dequantizers and renamed to Hugging Face names."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
from gguf import GGUFReader, LlamaFileType

from testbed.model.config import ModelConfig
from testbed.tokenizer import Tokenizer, tokenizer_from_gguf_vocab
from testbed.tokenizer.build import GGUF_TOKEN_CONTROL
from testbed.weights.gguf_dequant import dequantize
from testbed.weights.layout import check_shapes, expected_shapes
from testbed.weights.loaded import LoadedModel, mlx_dtype

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_TENSOR = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
# Control tokens that end a turn in Qwen2 models (their generation_config lists both).
_END_OF_TURN_TOKENS = ("<|im_end|>", "<|endoftext|>")


def hf_name(gguf_name: str) -> str | None:
    """The Hugging Face name of a GGUF tensor, or None for tensors Qwen2 does not use."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _BLOCK_TENSOR.fullmatch(gguf_name)
    if match and match[2] in _BLOCK_NAMES:
        return f"model.layers.{match[1]}.{_BLOCK_NAMES[match[2]]}.{match[3]}"
    return None


class _Metadata:
    """Typed access to a GGUF file's key/value metadata; errors name the file and key."""

    def __init__(self, reader: GGUFReader, source: str):
        self._fields, self.source = reader.fields, source

    def __contains__(self, key: str) -> bool:
        return key in self._fields

    def get(self, key: str, default: Any = None) -> Any:
        field = self._fields.get(key)
        return default if field is None else field.contents()

    def require(self, key: str) -> Any:
        if key not in self._fields:
            raise ValueError(f"{self.source}: metadata key {key} is missing")
        return self.get(key)


def _float32_value(x: float) -> float:
    """A float32 metadata value as its shortest decimal (1e-06, not 9.99999997e-07)."""
    return float(str(np.float32(x)))


def config_from_metadata(meta: _Metadata, has_output: bool, name: str) -> ModelConfig:
    arch = meta.require("general.architecture")
    if arch != "qwen2":
        raise ValueError(f"{meta.source}: general.architecture is {arch!r}; only 'qwen2' is supported")
    heads = meta.require("qwen2.attention.head_count")
    return ModelConfig(
        hidden_size=meta.require("qwen2.embedding_length"),
        intermediate_size=meta.require("qwen2.feed_forward_length"),
        num_hidden_layers=meta.require("qwen2.block_count"),
        num_attention_heads=heads,
        num_key_value_heads=meta.get("qwen2.attention.head_count_kv", heads),
        vocab_size=len(meta.require("tokenizer.ggml.tokens")),
        # Absent keys take llama.cpp's (and transformers' Qwen2Config) defaults.
        rope_theta=_float32_value(meta.get("qwen2.rope.freq_base", 10_000.0)),
        rms_norm_eps=_float32_value(meta.get("qwen2.attention.layer_norm_rms_epsilon", 1e-6)),
        tie_word_embeddings=not has_output,
        max_position_embeddings=meta.get("qwen2.context_length", 32768),
        name=meta.get("general.name", name),
    )


def tokenizer_from_metadata(meta: _Metadata) -> Tokenizer:
    model = meta.require("tokenizer.ggml.model")
    if model != "gpt2":
        raise ValueError(f"{meta.source}: tokenizer.ggml.model is {model!r}; Qwen2 uses 'gpt2' (byte-level BPE)")
    tokens = meta.require("tokenizer.ggml.tokens")
    types = meta.require("tokenizer.ggml.token_type")
    special_ids = {key: meta.get(f"tokenizer.ggml.{field}_token_id")
                   for key, field in (("bos_token", "bos"), ("eos_token", "eos"),
                                      ("pad_token", "padding"), ("unk_token", "unknown"))}
    special_ids = {key: value for key, value in special_ids.items() if value is not None}
    eos = [meta.get(f"tokenizer.ggml.{key}_token_id") for key in ("eos", "eot", "eom")]
    eos += [i for i, (t, kind) in enumerate(zip(tokens, types))
            if kind == GGUF_TOKEN_CONTROL and t in _END_OF_TURN_TOKENS]
    return tokenizer_from_gguf_vocab(
        tokens, types, meta.require("tokenizer.ggml.merges"),
        eos_token_ids=[i for i in eos if i is not None], special_token_ids=special_ids,
        chat_template=meta.get("tokenizer.chat_template"), source=meta.source)


def _describe(path: Path, meta: _Metadata) -> str:
    """'GGUF file x.gguf (Q4_K_M)', naming the file's quantization when it states one."""
    file_type = meta.get("general.file_type")
    if file_type is None:
        return f"GGUF file {path}"
    try:
        label = LlamaFileType(file_type).name.removeprefix("MOSTLY_")
    except ValueError:
        label = f"file type {file_type}"
    return f"GGUF file {path} ({label})"


def _open(path: Path) -> GGUFReader:
    if not path.is_file():
        raise ValueError(f"{path}: no such GGUF file")
    try:
        return GGUFReader(path)
    except Exception as e:  # gguf raises ValueError/struct errors for bad files
        raise ValueError(f"{path}: cannot be read as GGUF ({e})") from None


def load_gguf_tokenizer(path: str | Path) -> Tokenizer:
    """Only the tokenizer (and chat template) a GGUF file carries."""
    path = Path(path)
    return tokenizer_from_metadata(_Metadata(_open(path), str(path)))


def load_gguf(path: str | Path, dtype: str = "float32") -> LoadedModel:
    """Load a Qwen2 GGUF file, dequantizing every tensor to `dtype`."""
    path = Path(path)
    target = mlx_dtype(dtype)
    reader = _open(path)
    meta = _Metadata(reader, str(path))
    tensors = {t.name: t for t in reader.tensors}
    config = config_from_metadata(meta, "output.weight" in tensors, path.stem)

    by_hf_name = {hf: t for t in tensors.values() if (hf := hf_name(t.name)) is not None}
    check_shapes({hf: tuple(reversed(t.shape.tolist())) for hf, t in by_hf_name.items()},
                 config, str(path))
    weights = {}
    for name in expected_shapes(config):
        t = by_hf_name[name]
        values = dequantize(t.data, t.tensor_type, int(t.n_elements), f"{path}: tensor {t.name}")
        weights[name] = mx.array(values.reshape(tuple(reversed(t.shape.tolist())))).astype(target)
        mx.eval(weights[name])

    tokenizer = tokenizer_from_metadata(meta)
    generation_config = {key: meta.get(f"tokenizer.ggml.{field}_token_id")
                         for key, field in (("bos_token_id", "bos"), ("eos_token_id", "eos"),
                                            ("pad_token_id", "padding"))
                         if f"tokenizer.ggml.{field}_token_id" in meta}
    return LoadedModel(config, weights, tokenizer, tokenizer.eos_token_ids,
                       _describe(path, meta), generation_config)
