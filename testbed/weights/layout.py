"""The tensors a Qwen2 checkpoint must hold, with the shapes its config implies."""
from __future__ import annotations

from typing import Mapping, Sequence

from testbed.model.config import ModelConfig


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Hugging Face name -> shape for every weight the model reads ([out, in] for linears)."""
    h, inter, vocab = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    kv = cfg.num_key_value_heads * cfg.head_dim
    shapes = {"model.embed_tokens.weight": (vocab, h)}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (h, h), p + "self_attn.q_proj.bias": (h,),
            p + "self_attn.k_proj.weight": (kv, h), p + "self_attn.k_proj.bias": (kv,),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.v_proj.bias": (kv,),
            p + "self_attn.o_proj.weight": (h, h),
            p + "post_attention_layernorm.weight": (h,),
            p + "mlp.gate_proj.weight": (inter, h),
            p + "mlp.up_proj.weight": (inter, h),
            p + "mlp.down_proj.weight": (h, inter),
        })
    shapes["model.norm.weight"] = (h,)
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (vocab, h)
    return shapes


def is_norm(name: str) -> bool:
    return name.endswith("layernorm.weight") or name == "model.norm.weight"


def check_shapes(found: Mapping[str, Sequence[int]], cfg: ModelConfig, source: str,
                 where: Mapping[str, str] | None = None) -> None:
    """Raise ValueError unless `found` (name -> shape) has every expected tensor with its
    expected shape. Extra tensors are allowed. `where` names the file of each tensor."""
    where = where or {}
    expected = expected_shapes(cfg)
    missing = [name for name in expected if name not in found]
    if missing:
        listed = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise ValueError(f"{source}: missing tensor(s) {listed}")
    for name, shape in expected.items():
        if tuple(found[name]) != shape:
            raise ValueError(f"{where.get(name, source)}: tensor {name} has shape "
                             f"{tuple(found[name])}, but the config implies {shape}")
