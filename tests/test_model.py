"""Qwen2Model against Hugging Face transformers on tiny random checkpoints."""
import mlx.core as mx
import numpy as np
import pytest
import torch

from testbed.generate import generate
from testbed.model.kv_cache import ContiguousKVCache
from testbed.model.qwen2 import Qwen2Model
from testbed.model.config import ModelConfig
from tiny_qwen2 import build_tiny_qwen2, load_tiny, random_weights

PROMPT = [3, 17, 99, 250, 8, 1, 42, 7, 311, 64, 5]


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def tiny(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp("tied" if request.param else "untied")
    hf = build_tiny_qwen2(directory, tie=request.param)
    config, weights = load_tiny(directory)
    assert config.tie_word_embeddings == request.param
    assert ("lm_head.weight" in weights) != request.param
    return hf, config, weights


def forward(model: Qwen2Model, ids: list[int]) -> np.ndarray:
    cache = ContiguousKVCache.for_model(model, 1)
    positions = cache.prepare([len(ids)])
    return np.array(model(mx.array(ids), positions, cache))


def hf_logits(hf, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0].numpy()


def greedy(model: Qwen2Model, ids: list[int], n: int = 32) -> list[int]:
    return generate(model, [ids], max_tokens=n).completions[0].token_ids


@pytest.mark.parametrize("kernels", ["reference", "fast"])
def test_logits_match_transformers(tiny, kernels):
    hf, config, weights = tiny
    ours = forward(Qwen2Model(config, weights, kernels=kernels), PROMPT)
    theirs = hf_logits(hf, PROMPT)
    assert ours.shape == theirs.shape == (len(PROMPT), config.vocab_size)
    assert np.abs(ours - theirs).max() < 1e-4


@pytest.mark.parametrize("kernels", ["reference", "fast"])
def test_greedy_matches_transformers_generate(tiny, kernels):
    hf, config, weights = tiny
    with torch.no_grad():
        out = hf.generate(torch.tensor([PROMPT]), do_sample=False, max_new_tokens=32,
                          min_new_tokens=32)
    theirs = out[0, len(PROMPT):].tolist()
    assert len(set(theirs)) > 3  # a non-degenerate continuation
    assert greedy(Qwen2Model(config, weights, kernels=kernels), PROMPT) == theirs


def test_logits_indices_select_rows(tiny):
    _, config, weights = tiny
    model = Qwen2Model(config, weights)
    full = forward(model, PROMPT)
    cache = ContiguousKVCache.for_model(model, 1)
    positions = cache.prepare([len(PROMPT)])
    rows = model(mx.array(PROMPT), positions, cache, logits_indices=mx.array([0, 10, 4]))
    np.testing.assert_allclose(np.array(rows), full[[0, 10, 4]], atol=1e-5)


def test_reference_and_fast_kernels_agree(tiny):
    _, config, weights = tiny
    ref = Qwen2Model(config, weights, kernels="reference")
    fast = Qwen2Model(config, weights, kernels="fast")
    np.testing.assert_allclose(forward(ref, PROMPT), forward(fast, PROMPT), atol=1e-4)
    assert greedy(ref, PROMPT, 24) == greedy(fast, PROMPT, 24)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("kernels", ["reference", "fast"])
def test_half_precision_stays_close_to_float32(tiny, dtype, kernels):
    _, config, weights = tiny
    exact = forward(Qwen2Model(config, weights), PROMPT)
    half = forward(Qwen2Model(config, weights, dtype=dtype, kernels=kernels), PROMPT)
    assert half.dtype == np.float32
    # Measured: bfloat16 ~1.7%, float16 ~0.2% of the logit range.
    bound = 0.03 if dtype == "bfloat16" else 0.005
    assert np.abs(half - exact).max() < bound * np.abs(exact).max()
    assert (half.argmax(-1) == exact.argmax(-1)).mean() >= 0.9


def test_8bit_logits_close_to_float(tiny):
    _, config, weights = tiny
    exact = forward(Qwen2Model(config, weights), PROMPT * 3)
    quant = forward(Qwen2Model(config, weights, quant_bits=8), PROMPT * 3)
    # Random weights have no outliers to protect; measured max error is ~3% of the range.
    assert np.abs(quant - exact).max() < 0.05 * np.abs(exact).max()
    assert (quant.argmax(-1) == exact.argmax(-1)).mean() >= 0.9


def test_4bit_runs_and_stays_loosely_close(tiny):
    _, config, weights = tiny
    exact = forward(Qwen2Model(config, weights), PROMPT)
    quant = forward(Qwen2Model(config, weights, quant_bits=4), PROMPT)
    assert np.isfinite(quant).all()
    assert np.abs(quant - exact).max() < 0.6 * np.abs(exact).max()
    assert np.corrcoef(quant.ravel(), exact.ravel())[0, 1] > 0.8


def test_8bit_greedy_mostly_equal_to_float(tiny):
    _, config, weights = tiny
    exact = greedy(Qwen2Model(config, weights), PROMPT)
    quant = greedy(Qwen2Model(config, weights, quant_bits=8), PROMPT)
    assert sum(a == b for a, b in zip(exact, quant)) >= 24


QUANT_CONFIG = ModelConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                           name="quant-test")


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group_size", [64, 128])
@pytest.mark.parametrize("kernels", ["reference", "fast"])
def test_quantized_model_is_float_model_on_dequantized_weights(bits, group_size, kernels):
    weights = random_weights(QUANT_CONFIG)
    rounded = {name: mx.dequantize(*mx.quantize(w, group_size=group_size, bits=bits),
                                   group_size=group_size, bits=bits)
               if w.ndim == 2 else w for name, w in weights.items()}
    quant = Qwen2Model(QUANT_CONFIG, weights, quant_bits=bits, quant_group_size=group_size,
                       kernels=kernels)
    dense = Qwen2Model(QUANT_CONFIG, rounded, kernels=kernels)
    np.testing.assert_allclose(forward(quant, PROMPT), forward(dense, PROMPT), atol=2e-4)


def test_group_size_must_divide_inputs(tiny):
    _, config, weights = tiny
    with pytest.raises(ValueError, match=r"model\.embed_tokens\.weight.*quant_group_size=128"):
        Qwen2Model(config, weights, quant_bits=4, quant_group_size=128)


def test_missing_tensor_is_named(tiny):
    _, config, weights = tiny
    broken = dict(weights)
    del broken["model.layers.1.self_attn.k_proj.bias"]
    with pytest.raises(ValueError, match=r"missing.*model\.layers\.1\.self_attn\.k_proj\.bias"):
        Qwen2Model(config, broken)


def test_wrong_shape_names_tensor_and_both_shapes(tiny):
    _, config, weights = tiny
    broken = dict(weights)
    broken["model.layers.0.mlp.up_proj.weight"] = mx.zeros((64, 64))
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.up_proj\.weight.*"
                                         r"\(64, 64\).*\(128, 64\)"):
        Qwen2Model(config, broken)


def test_unexpected_tensor_is_named(tiny):
    _, config, weights = tiny
    broken = dict(weights)
    broken["model.layers.0.self_attn.o_proj.bias"] = mx.zeros((64,))
    with pytest.raises(ValueError, match=r"unexpected.*o_proj\.bias"):
        Qwen2Model(config, broken)


def test_bad_settings_are_rejected(tiny):
    _, config, weights = tiny
    with pytest.raises(ValueError, match="dtype"):
        Qwen2Model(config, weights, dtype="float64")
    with pytest.raises(ValueError, match="kernels"):
        Qwen2Model(config, weights, kernels="turbo")
    with pytest.raises(ValueError, match="quant_bits"):
        Qwen2Model(config, weights, quant_bits=3)
