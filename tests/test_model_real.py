"""Qwen2Model on the real Qwen2.5-Coder-0.5B-Instruct GGUF against transformers on the same
file: logits and the greedy continuation. Needs `python -m testbed fetch-model`."""
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from testbed.cli.fetch_model import DEFAULT_DEST
from testbed.generate import generate
from testbed.model.kv_cache import ContiguousKVCache
from testbed.model.qwen2 import Qwen2Model
from testbed.request import SamplingParams
from testbed.weights import load_model

REAL_GGUF = Path(__file__).resolve().parents[1] / DEFAULT_DEST
PROMPT = "def quicksort(arr):"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not REAL_GGUF.is_file(),
                       reason=f"{REAL_GGUF} is absent; run `python -m testbed fetch-model` to get it"),
]


@pytest.fixture(scope="module")
def ours():
    loaded = load_model(str(REAL_GGUF))
    return loaded, Qwen2Model(loaded.config, loaded.weights)


@pytest.fixture(scope="module")
def theirs():
    import torch
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(REAL_GGUF.parent, gguf_file=REAL_GGUF.name,
                                                dtype=torch.float32).eval()


def test_logits_and_greedy_continuation_match_transformers(ours, theirs):
    import torch
    loaded, model = ours
    ids = loaded.tokenizer.encode(PROMPT)
    cache = ContiguousKVCache.for_model(model, 1)
    logits = np.array(model(mx.array(ids), cache.prepare([len(ids)]), cache))
    with torch.no_grad():
        reference = theirs(torch.tensor([ids])).logits[0].numpy()
        continuation = theirs.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=24,
                                       min_new_tokens=24)[0, len(ids):].tolist()
    assert np.abs(logits - reference).max() < 2e-3 * np.abs(reference).max()
    result = generate(model, [ids], max_tokens=24, tokenizer=loaded.tokenizer,
                      sampling=SamplingParams(ignore_eos=True))
    assert result.completions[0].token_ids == continuation
    assert "return" in result.completions[0].text or "pivot" in result.completions[0].text
