"""Qwen2 / Qwen2.5 decoder written from raw `mlx.core` ops.

The forward runs over a flattened batch, as vLLM's model runner does: the tokens of all
sequences are concatenated into one [T] array with each token's position, and attention is
delegated to an `AttentionFn` that owns the KV cache and knows which rows belong to which
sequence. So one model serves a contiguous cache for `generate`, and a paged pool for the
serving engine.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import mlx.core as mx

from testbed.model.config import ModelConfig
from testbed.model.kernels import Kernels, add_rms_norm, check_kernels, rms_norm, rope_qkv, swiglu
from testbed.model.kernels import attention as attention_kernel
from testbed.model.linear import Linear, QuantizedLinear

DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}

Projection = Linear | QuantizedLinear


class AttentionFn(Protocol):
    def __call__(self, layer: int, q: mx.array, kv: mx.array) -> mx.array:
        """q [T, n_heads, head_dim] RoPE'd; kv [T, 2 * n_kv_heads, head_dim]: the keys
        (RoPE'd) then the values, as one array so a paged pool stores them in one write.
        Stores kv in the backend's cache and returns attention output [T, n_heads, head_dim]."""
        ...


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a Qwen2 checkpoint of this config holds, Hugging Face names -> shape."""
    h, inter, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    q_out = config.num_attention_heads * config.head_dim
    kv_out = config.num_key_value_heads * config.head_dim
    shapes = {"model.embed_tokens.weight": (vocab, h), "model.norm.weight": (h,)}
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (vocab, h)
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (q_out, h), p + "self_attn.q_proj.bias": (q_out,),
            p + "self_attn.k_proj.weight": (kv_out, h), p + "self_attn.k_proj.bias": (kv_out,),
            p + "self_attn.v_proj.weight": (kv_out, h), p + "self_attn.v_proj.bias": (kv_out,),
            p + "self_attn.o_proj.weight": (h, q_out),
            p + "post_attention_layernorm.weight": (h,),
            p + "mlp.gate_proj.weight": (inter, h),
            p + "mlp.up_proj.weight": (inter, h),
            p + "mlp.down_proj.weight": (h, inter),
        })
    return shapes


def validate_weights(config: ModelConfig, weights: dict[str, mx.array]) -> None:
    """Raise ValueError naming every missing, unexpected or wrongly shaped tensor."""
    shapes = expected_shapes(config)
    missing = [n for n in shapes if n not in weights]
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise ValueError(f"weights: missing tensor(s) {', '.join(missing[:5])}{more} "
                         f"for config {config.name!r}")
    unexpected = sorted(n for n in weights if n not in shapes)
    if unexpected:
        hint = (" (lm_head.weight with tie_word_embeddings=True)"
                if "lm_head.weight" in unexpected else "")
        raise ValueError(f"weights: unexpected tensor(s) {', '.join(unexpected[:5])}{hint} "
                         f"for config {config.name!r}")
    for name, shape in shapes.items():
        got = tuple(weights[name].shape)
        if got != shape:
            raise ValueError(f"weights: tensor {name} has shape {got}, config {config.name!r} "
                             f"expects {shape}")


@dataclass(slots=True)
class DecoderLayer:
    """One decoder layer. Q, K and V are one projection (their weights stacked on the output
    axis), and so are the MLP's gate and up: one matmul each instead of three and two, which is
    what small-batch decode on a GPU is bound by (kernel launches, not FLOPs)."""

    input_norm: mx.array
    qkv_proj: Projection
    o_proj: Projection
    post_attention_norm: mx.array
    gate_up_proj: Projection
    down_proj: Projection


class Qwen2Model:
    """A Qwen2 decoder over a flat dict of Hugging Face-named weights.

    `dtype` is the compute and storage dtype ("float32", "float16", "bfloat16"); logits are
    always float32. `quant_bits` (4 or 8) stores every projection, the embedding and the LM
    head affine-quantized in groups of `quant_group_size` inputs; norms and biases stay dense.
    """

    def __init__(self, config: ModelConfig, weights: dict[str, mx.array], *,
                 dtype: str = "float32", kernels: str = "fast", quant_bits: int | None = None,
                 quant_group_size: int = 64):
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r}: choose one of {', '.join(DTYPES)}")
        validate_weights(config, weights)
        self.config = config
        self.dtype = dtype
        self.kernels: Kernels = check_kernels(kernels)
        self.quant_bits = quant_bits
        self.scale = config.head_dim ** -0.5
        target = DTYPES[dtype]
        cast = {name: w if w.dtype == target else w.astype(target) for name, w in weights.items()}

        def projection(names: list[str], with_bias: bool = False) -> Projection:
            """One projection over the stacked weights (and biases) of `names`."""
            def stacked(suffix: str) -> mx.array:
                parts = [cast[n + suffix] for n in names]
                return parts[0] if len(parts) == 1 else mx.concatenate(parts, axis=0)

            weight = stacked(".weight")
            bias = stacked(".bias") if with_bias else None
            if quant_bits is None:
                return Linear(weight, bias, self.kernels)
            return QuantizedLinear.from_dense("+".join(names) + ".weight", weight, bias,
                                              quant_bits, quant_group_size, self.kernels)

        self.embed = projection(["model.embed_tokens"])
        self.lm_head = self.embed if config.tie_word_embeddings else projection(["lm_head"])
        self.norm = cast["model.norm.weight"]
        self.layers = []
        for i in range(config.num_hidden_layers):
            a, m = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
            self.layers.append(DecoderLayer(
                input_norm=cast[f"model.layers.{i}.input_layernorm.weight"],
                qkv_proj=projection([a + "q_proj", a + "k_proj", a + "v_proj"], with_bias=True),
                o_proj=projection([a + "o_proj"]),
                post_attention_norm=cast[f"model.layers.{i}.post_attention_layernorm.weight"],
                gate_up_proj=projection([m + "gate_proj", m + "up_proj"]),
                down_proj=projection([m + "down_proj"]),
            ))
            mx.eval(_arrays(self.layers[-1]))  # materialize the stacked weights layer by layer
        mx.eval(_arrays([self.embed, self.lm_head, self.norm]))

    @property
    def nbytes(self) -> int:
        """Bytes of every weight the model holds (quantized ones as stored; a tied head
        shares the embedding's array)."""
        arrays = _arrays([self.embed, self.lm_head, self.norm, self.layers])
        return sum({id(a): a.nbytes for a in arrays}.values())

    def attend(self, q: mx.array, k: mx.array, v: mx.array, mask: mx.array | str | None,
               scale: float) -> mx.array:
        """The attention kernel this model was built with, for AttentionFn backends."""
        return attention_kernel(q, k, v, mask, scale, self.kernels)

    def __call__(self, token_ids: mx.array, positions: mx.array, attention: AttentionFn,
                 logits_indices: mx.array | None = None) -> mx.array:
        """Logits float32 [N or T, vocab] for the flattened batch `token_ids` [T] at
        `positions` [T]; only rows `logits_indices` [N] are projected when given."""
        if token_ids.ndim != 1 or positions.shape != token_ids.shape:
            raise ValueError(f"token_ids {token_ids.shape} and positions {positions.shape} "
                             f"must both be 1-D of the same length")
        cfg, k = self.config, self.kernels
        h = self.embed.rows(token_ids)
        x = rms_norm(h, self.layers[0].input_norm, cfg.rms_norm_eps, k)
        for i, layer in enumerate(self.layers):
            a = self._self_attention(i, layer, x, positions, attention)
            h, x = add_rms_norm(a, h, layer.post_attention_norm, cfg.rms_norm_eps, k)
            gate_up = layer.gate_up_proj(x)
            inter = cfg.intermediate_size
            m = layer.down_proj(swiglu(gate_up[:, :inter], gate_up[:, inter:], k))
            next_norm = self.layers[i + 1].input_norm if i + 1 < len(self.layers) else self.norm
            h, x = add_rms_norm(m, h, next_norm, cfg.rms_norm_eps, k)
        if logits_indices is not None:
            x = x[logits_indices]
        return self.lm_head(x, out_dtype=mx.float32)

    def _self_attention(self, index: int, layer: DecoderLayer, x: mx.array,
                        positions: mx.array, attention: AttentionFn) -> mx.array:
        cfg, n = self.config, x.shape[0]
        heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        qkv = layer.qkv_proj(x).reshape(n, heads + 2 * kv_heads, cfg.head_dim)
        q, kv = rope_qkv(qkv, positions, cfg.rope_theta, heads, kv_heads, self.kernels)
        out = attention(index, q, kv)
        return layer.o_proj(out.reshape(n, cfg.num_attention_heads * cfg.head_dim))


def _arrays(obj) -> list[mx.array]:
    """Every array held by a (nested) dataclass / list of projections and layers."""
    if isinstance(obj, mx.array):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [a for item in obj for a in _arrays(item)]
    if hasattr(obj, "__dataclass_fields__"):
        return [a for name in obj.__dataclass_fields__ for a in _arrays(getattr(obj, name))]
    return []
