"""The real Qwen2.5-Coder-0.5B-Instruct GGUF (Q4_K_M: Q5_0, Q8_0, Q4_K, Q6_K and F32 tensors)
loaded through load_model, against transformers' own GGUF loading of the same file.
Needs `python -m testbed fetch-model`."""
from pathlib import Path

import gguf
import numpy as np
import pytest

from testbed.cli.fetch_model import DEFAULT_DEST
from testbed.weights import load_model
from testbed.weights.gguf_file import hf_name

REAL_GGUF = Path(__file__).resolve().parents[1] / DEFAULT_DEST
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not REAL_GGUF.is_file(),
                       reason=f"{REAL_GGUF} is absent; run `python -m testbed fetch-model` to get it"),
]


@pytest.fixture(scope="module")
def loaded():
    return load_model(str(REAL_GGUF))


def test_config_and_source(loaded):
    from transformers import AutoConfig
    reference = AutoConfig.from_pretrained(REAL_GGUF.parent, gguf_file=REAL_GGUF.name)
    cfg = loaded.config
    for field in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "vocab_size", "max_position_embeddings"):
        assert getattr(cfg, field) == getattr(reference, field), field
    assert cfg.rope_theta == reference.rope_parameters["rope_theta"]
    assert cfg.rms_norm_eps == pytest.approx(reference.rms_norm_eps)
    assert cfg.tie_word_embeddings is False  # this file carries its own output.weight
    assert loaded.source == f"GGUF file {REAL_GGUF} (Q4_K_M)"


def test_every_tensor_equals_gguf_reference(loaded):
    reader = gguf.GGUFReader(REAL_GGUF)
    seen = set()
    for t in reader.tensors:
        ours = np.array(loaded.weights[hf_name(t.name)])
        np.testing.assert_array_equal(ours, gguf.quants.dequantize(t.data, t.tensor_type), err_msg=t.name)
        seen.add(t.tensor_type.name)
    assert seen == {"F32", "Q5_0", "Q8_0", "Q4_K", "Q6_K"}


def test_weights_equal_transformers_state_dict(loaded):
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(REAL_GGUF.parent, gguf_file=REAL_GGUF.name,
                                                 dtype=torch.float32)
    state = model.state_dict()
    for name, array in loaded.weights.items():
        np.testing.assert_allclose(np.array(array), state[name].numpy(), rtol=0, atol=1e-6, err_msg=name)
