"""Analytic step time: FLOPs and bytes of each part of a Qwen2 forward pass over a roofline.

Per step, with T batched tokens, S sampling rows and a matmul FLOP counted as 2 (multiply, add):

- `linear`: the per-layer projections, QKV (h -> h + 2 kv), O (h -> h) and the SwiGLU MLP
  (gate, up: h -> i; down: i -> h). FLOPs 2 T W L with W = h (h + 2 kv) + h^2 + 3 h i weights
  per layer; bytes: every layer weight read once per step, W L b.
- `prefill_attention` / `decode_attention`: scores and values over the context, 4 h FLOPs per
  query-key pair and layer (2 d for q.k and 2 d for p.v, times the query heads), pairs from
  `prefill_attn_work` / `sum_decode_context`; bytes: K and V of every key read once per
  sequence (`sum_prefill_context` / `sum_decode_context` tokens) plus K and V of the new
  tokens written.
- `lm_head`: 2 S h V FLOPs, only for the rows that sample; its h V weights read when S > 0.

Each part is its own roofline, max(FLOPs / (peak x mfu), bytes / (bandwidth x mbu)), and the
parts add up: a device runs kernels one after another, so memory-bound decode attention cannot
hide under a compute-bound prefill MLP in the same step (a single max over the step's totals
would let it). Left out as small next to these: norms, RoPE, softmax, biases, the embedding
gather and activation traffic (compute-bound where large). Then the profile's fixed per-step
overhead. With tensor parallelism (Megatron style: heads and MLP columns split over
`tensor_parallel` devices) FLOPs and bytes divide by the degree, and two all-reduces of
T h b bytes per layer cross the interconnect as a ring (2 (tp - 1) / tp of the bytes each way).
"""
from __future__ import annotations

from dataclasses import dataclass

from testbed.model.config import ModelConfig
from testbed.sim.base import COST_MODELS
from testbed.sim.features import StepFeatures, decode_features
from testbed.sim.hardware import HardwareProfile, dtype_bytes

_PARTS = ("linear", "prefill_attention", "decode_attention", "lm_head")


@dataclass(frozen=True, slots=True)
class Component:
    """One part of a step on one device: its work and the time its roofline gives it."""

    name: str
    flops: float
    bytes: float
    seconds: float
    bound: str  # "compute" | "memory" | "link"


@COST_MODELS.register("roofline")
class RooflineCostModel:
    """Step seconds of `model` in `dtype` on `hardware`, split over `tensor_parallel` devices."""

    def __init__(self, model: ModelConfig, hardware: HardwareProfile, dtype: str = "bfloat16",
                 tensor_parallel: int = 1):
        tp = tensor_parallel
        if tp < 1 or model.num_attention_heads % tp or model.num_key_value_heads % tp:
            raise ValueError(
                f"tensor_parallel={tp} must divide {model.name}'s {model.num_attention_heads} "
                f"query heads and {model.num_key_value_heads} KV heads")
        if tp > 1 and not hardware.interconnect_bandwidth:
            raise ValueError(f"hardware {hardware.name!r} has no interconnect_bandwidth; "
                             f"tensor_parallel={tp} needs one")
        self.model, self.hardware, self.dtype, self.tensor_parallel = model, hardware, dtype, tp
        h, i, L, V = model.hidden_size, model.intermediate_size, model.num_hidden_layers, model.vocab_size
        kv = model.num_key_value_heads * model.head_dim
        b = dtype_bytes(dtype)
        layer_weights = h * (h + 2 * kv) + h * h + 3 * h * i
        self._flop_rate = hardware.flops(dtype) * hardware.mfu
        self._byte_rate = hardware.mem_bandwidth * hardware.mbu
        self._linear_flops_per_token = 2 * layer_weights * L / tp
        self._linear_bytes = layer_weights * L * b / tp
        self._attn_flops_per_pair = 4 * h * L / tp
        self._kv_bytes_per_token = 2 * kv * b * L / tp
        self._lm_flops_per_row = 2 * h * V / tp
        self._lm_bytes = h * V * b / tp
        self._allreduce_bytes_per_token = 2 * L * h * b * 2 * (tp - 1) / tp
        self._link_rate = hardware.interconnect_bandwidth
        self._by_batch: dict[int, tuple[float, float]] = {}  # see decode_seconds

    def components(self, f: StepFeatures) -> list[Component]:
        """The step's parts on one device, in execution order (for inspection and tests)."""
        parts = []
        for name, (flops, nbytes) in zip(_PARTS, self._work(f)):
            compute, memory = flops / self._flop_rate, nbytes / self._byte_rate
            bound = "compute" if compute >= memory else "memory"
            parts.append(Component(name, flops, nbytes, max(compute, memory), bound))
        if self.tensor_parallel > 1:
            link_bytes = self._allreduce_bytes_per_token * f.n_batched_tokens
            parts.append(Component("allreduce", 0.0, link_bytes, link_bytes / self._link_rate, "link"))
        return parts

    def predict(self, features: StepFeatures) -> float:
        flop_rate, byte_rate = self._flop_rate, self._byte_rate
        seconds = self.hardware.step_overhead_s
        if self.tensor_parallel > 1:
            seconds += self._allreduce_bytes_per_token * features.n_batched_tokens / self._link_rate
        for flops, nbytes in self._work(features):
            seconds += max(flops / flop_rate, nbytes / byte_rate)
        return seconds

    def decode_seconds(self, n_decodes: int, sum_decode_context: int) -> float:
        """`predict` of a decode-only step (`decode_features`), the same sum in the same order,
        with the terms that depend on the batch size alone remembered per batch size."""
        by_batch = self._by_batch.get(n_decodes)
        if by_batch is None:
            by_batch = self._by_batch[n_decodes] = self._batch_terms(n_decodes)
        before, lm_head = by_batch
        compute = self._attn_flops_per_pair * sum_decode_context / self._flop_rate
        memory = self._kv_bytes_per_token * (sum_decode_context + n_decodes) / self._byte_rate
        return before + (compute if compute >= memory else memory) + lm_head

    def _batch_terms(self, n_decodes: int) -> tuple[float, float]:
        """Of a decode step of `n_decodes` sequences: the running sum of `predict` up to its
        decode attention, and its LM head term."""
        linear, prefill, _, lm_head = ((max(flops / self._flop_rate, nbytes / self._byte_rate))
                                       for flops, nbytes in self._work(decode_features(n_decodes, 0)))
        before = self.hardware.step_overhead_s
        if self.tensor_parallel > 1:
            before += self._allreduce_bytes_per_token * n_decodes / self._link_rate
        return before + linear + prefill, lm_head

    def _work(self, f: StepFeatures) -> tuple[tuple[float, float], ...]:
        """(FLOPs, bytes) of each part in `_PARTS`, per device."""
        kv = self._kv_bytes_per_token
        return (
            (self._linear_flops_per_token * f.n_batched_tokens, self._linear_bytes),
            (self._attn_flops_per_pair * f.prefill_attn_work,
             kv * (f.sum_prefill_context + f.n_prefill_tokens)),
            (self._attn_flops_per_pair * f.sum_decode_context,
             kv * (f.sum_decode_context + f.n_decode_seqs)),
            (self._lm_flops_per_row * f.n_samples, self._lm_bytes if f.n_samples else 0.0),
        )


def swap_seconds_per_block(model: ModelConfig, hardware: HardwareProfile, block_size: int,
                           dtype: str = "bfloat16", tensor_parallel: int = 1) -> float:
    """Time to copy one KV block (all layers) between device and host memory; with tensor
    parallelism each device moves its share of the heads over its own link."""
    block_bytes = block_size * model.kv_bytes_per_token(dtype) / tensor_parallel
    return block_bytes / hardware.host_link_bandwidth
