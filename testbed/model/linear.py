"""Linear projections as plain weight holders: dense, or affine-quantized with `mx.quantize`.

Both map [..., in] -> [..., out] with an [out, in] weight (Hugging Face layout) and an
optional bias, and both can look up rows of their weight, so a tied embedding and LM head
share one (possibly quantized) matrix.
"""
from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx

from testbed.model import cuda_matmul
from testbed.model.kernels import Kernels

QUANT_BITS = (4, 8)
QUANT_GROUP_SIZES = (64, 128)


@dataclass(slots=True)
class Linear:
    weight: mx.array  # [out, in]
    bias: mx.array | None = None
    kernels: Kernels = "fast"

    def __call__(self, x: mx.array, out_dtype: mx.Dtype | None = None) -> mx.array:
        """x @ weight.T (+ bias), in `out_dtype` if given (the float32 logits)."""
        if self.kernels == "fast" and cuda_matmul.supports(x, self.weight):
            return cuda_matmul.small_matmul(x, self.weight, self.bias, out_dtype)
        if self.bias is None:
            y = x @ self.weight.T
        elif self.kernels == "fast" and not cuda_matmul.single_row(x):
            y = mx.addmm(self.bias, x, self.weight.T)
        else:
            y = x @ self.weight.T + self.bias
        return y if out_dtype is None else y.astype(out_dtype)

    def rows(self, ids: mx.array) -> mx.array:
        """Weight rows `ids` ([T] -> [T, in]): the embedding lookup."""
        return self.weight[ids]


@dataclass(slots=True)
class QuantizedLinear:
    """`weight` stored as `bits`-bit integers with one scale and offset per `group_size` inputs.

    Reference dequantizes and multiplies; fast calls the fused `mx.quantized_matmul`.
    """

    packed: mx.array  # [out, in * bits / 32] uint32
    scales: mx.array  # [out, in / group_size]
    offsets: mx.array  # [out, in / group_size]
    bits: int
    group_size: int
    bias: mx.array | None = None
    kernels: Kernels = "fast"

    @classmethod
    def from_dense(cls, name: str, weight: mx.array, bias: mx.array | None, bits: int,
                   group_size: int, kernels: Kernels = "fast") -> "QuantizedLinear":
        if bits not in QUANT_BITS:
            raise ValueError(f"quant_bits={bits}: supported are {QUANT_BITS}")
        if group_size not in QUANT_GROUP_SIZES:
            raise ValueError(f"quant_group_size={group_size}: supported are {QUANT_GROUP_SIZES}")
        if weight.shape[-1] % group_size:
            raise ValueError(f"{name}: input size {weight.shape[-1]} is not a multiple of "
                             f"quant_group_size={group_size}")
        packed, scales, offsets = mx.quantize(weight, group_size=group_size, bits=bits)
        return cls(packed, scales, offsets, bits, group_size, bias, kernels)

    def dequantized(self) -> mx.array:
        return mx.dequantize(self.packed, self.scales, self.offsets,
                             group_size=self.group_size, bits=self.bits)

    def __call__(self, x: mx.array, out_dtype: mx.Dtype | None = None) -> mx.array:
        if self.kernels == "fast":
            y = mx.quantized_matmul(x, self.packed, self.scales, self.offsets, transpose=True,
                                    group_size=self.group_size, bits=self.bits)
        else:
            y = x @ self.dequantized().T
        y = y if self.bias is None else y + self.bias
        return y if out_dtype is None else y.astype(out_dtype)

    def rows(self, ids: mx.array) -> mx.array:
        """Dequantized weight rows `ids` ([T] -> [T, in]): the embedding lookup."""
        return mx.dequantize(self.packed[ids], self.scales[ids], self.offsets[ids],
                             group_size=self.group_size, bits=self.bits)
