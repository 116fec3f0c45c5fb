"""Qwen2 / Qwen2.5 model shapes: everything the engine, the KV accounting and the cost
models need to know about a model, read from a Hugging Face `config.json` or named."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True, slots=True)
class ModelConfig:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 32768
    name: str = "qwen2"

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"model config: hidden_size={self.hidden_size} is not a multiple of "
                f"num_attention_heads={self.num_attention_heads}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"model config: num_attention_heads={self.num_attention_heads} is not a multiple "
                f"of num_key_value_heads={self.num_key_value_heads}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def kv_bytes_per_token(self, dtype: str = "bfloat16") -> int:
        """Bytes of K and V cache one token occupies across all layers."""
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim * _DTYPE_BYTES[dtype]

    def num_params(self) -> int:
        h, i, L = self.hidden_size, self.intermediate_size, self.num_hidden_layers
        kv = self.num_key_value_heads * self.head_dim
        attn = h * h + 2 * h * kv + h * h + h + 2 * kv  # q, k, v, o weights + qkv biases
        mlp = 3 * h * i
        per_layer = attn + mlp + 2 * h  # two RMSNorm weights
        emb = self.vocab_size * h
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        return L * per_layer + emb + head + h

    @classmethod
    def from_hf_dict(cls, d: dict, source: str = "config.json") -> "ModelConfig":
        """Build from a Hugging Face Qwen2 `config.json` dict; errors name the missing field."""
        archs = d.get("architectures") or []
        model_type = d.get("model_type")
        if model_type not in (None, "qwen2") or (archs and not any("Qwen2" in a for a in archs)):
            raise ValueError(
                f"{source}: architecture {archs or model_type!r} is not Qwen2 "
                f"(model_type must be 'qwen2')")
        required = ["hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads", "vocab_size"]
        missing = [k for k in required if k not in d]
        if missing:
            raise ValueError(f"{source}: missing field(s) {', '.join(missing)}")
        names = {f.name for f in fields(cls)}
        kw = {k: d[k] for k in names if k in d and d[k] is not None}
        kw.setdefault("num_key_value_heads", d["num_attention_heads"])
        # transformers >= 5 nests RoPE settings under `rope_parameters` (older: `rope_scaling`).
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ValueError(f"{source}: rope_type {rope_type!r} is not supported (only 'default')")
        if "rope_theta" not in kw and "rope_theta" in rope:
            kw["rope_theta"] = rope["rope_theta"]
        kw["name"] = d.get("_name_or_path") or d.get("name") or "qwen2"
        return cls(**kw)

    @classmethod
    def from_json(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        return cls.from_hf_dict(d, str(path))

    def to_dict(self) -> dict:
        return asdict(self)


def _named(name, h, i, layers, heads, kv, vocab, tie, max_pos=32768) -> ModelConfig:
    return ModelConfig(hidden_size=h, intermediate_size=i, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
                       tie_word_embeddings=tie, max_position_embeddings=max_pos, name=name)


# Shapes of the released checkpoints (their config.json files), for `dummy` weights and the simulator.
NAMED_CONFIGS: dict[str, ModelConfig] = {c.name: c for c in [
    _named("qwen2-0.5b", 896, 4864, 24, 14, 2, 151936, True, 131072),
    _named("qwen2-1.5b", 1536, 8960, 28, 12, 2, 151936, True, 131072),
    _named("qwen2-7b", 3584, 18944, 28, 28, 4, 152064, False, 131072),
    _named("qwen2-72b", 8192, 29568, 80, 64, 8, 152064, False, 131072),
    _named("qwen2.5-0.5b", 896, 4864, 24, 14, 2, 151936, True),
    _named("qwen2.5-1.5b", 1536, 8960, 28, 12, 2, 151936, True),
    _named("qwen2.5-3b", 2048, 11008, 36, 16, 2, 151936, True),
    _named("qwen2.5-7b", 3584, 18944, 28, 28, 4, 152064, False),
    _named("qwen2.5-14b", 5120, 13824, 48, 40, 8, 152064, False),
    _named("qwen2.5-32b", 5120, 27648, 64, 40, 8, 152064, False),
    _named("qwen2.5-72b", 8192, 29568, 80, 64, 8, 152064, False),
    # Small shapes of the same architecture, for tests and CPU demos.
    _named("qwen2-tiny", 64, 128, 2, 4, 2, 512, True, 4096),
    _named("qwen2-small", 256, 704, 4, 8, 2, 4096, False, 8192),
]}


def named_config(name: str) -> ModelConfig:
    key = name.lower()
    if key not in NAMED_CONFIGS:
        raise ValueError(f"unknown model config {name!r}; known: {', '.join(sorted(NAMED_CONFIGS))}")
    return NAMED_CONFIGS[key]


def with_overrides(cfg: ModelConfig, **kw) -> ModelConfig:
    return replace(cfg, **kw)
