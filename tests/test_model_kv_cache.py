"""ContiguousKVCache: a sequence in a mixed batch computes what it computes alone."""
import mlx.core as mx
import numpy as np
import pytest

from testbed.model.config import ModelConfig
from testbed.model.kv_cache import ContiguousKVCache
from testbed.model.qwen2 import Qwen2Model
from tiny_qwen2 import random_weights

CONFIG = ModelConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                     rope_theta=10_000.0, name="kv-test")
rng = np.random.default_rng(1)


@pytest.fixture(scope="module", params=["reference", "fast"])
def model(request):
    return Qwen2Model(CONFIG, random_weights(CONFIG), kernels=request.param)


def alone(model, tokens: list[int]) -> np.ndarray:
    """Logits of every position of `tokens`, computed in one forward over a fresh cache."""
    cache = ContiguousKVCache.for_model(model, 1)
    return np.array(model(mx.array(tokens), cache.prepare([len(tokens)]), cache))


def run_steps(model, sequences: list[list[int]], schedule: list[list[int]]
              ) -> list[list[np.ndarray]]:
    """Feed each sequence's tokens in the chunk sizes of `schedule` (one row per step);
    returns, per sequence, the logits rows it got, in order."""
    cache = ContiguousKVCache.for_model(model, len(sequences), capacity=8)
    done = [0] * len(sequences)
    got: list[list[np.ndarray]] = [[] for _ in sequences]
    for counts in schedule:
        positions = cache.prepare(counts)
        tokens = [t for s, n, d in zip(sequences, counts, done) for t in s[d:d + n]]
        logits = np.array(model(mx.array(tokens), positions, cache))
        expected_positions = [p for n, d in zip(counts, done) for p in range(d, d + n)]
        assert np.array(positions).tolist() == expected_positions
        row = 0
        for i, n in enumerate(counts):
            got[i].extend(logits[row:row + n])
            row += n
            done[i] += n
    assert cache.lengths == done
    return got


def check_against_alone(model, sequences, schedule):
    got = run_steps(model, sequences, schedule)
    for seq, rows in zip(sequences, got):
        np.testing.assert_allclose(np.stack(rows), alone(model, seq), atol=1e-5)


def tokens(n: int) -> list[int]:
    return rng.integers(0, CONFIG.vocab_size, n).tolist()


def test_prefill_of_different_lengths_then_decodes(model):
    seqs = [tokens(5 + 4), tokens(11 + 4), tokens(1 + 4)]
    check_against_alone(model, seqs, [[5, 11, 1]] + [[1, 1, 1]] * 4)


def test_equal_lengths_use_the_causal_path(model):
    seqs = [tokens(6 + 2), tokens(6 + 2)]
    check_against_alone(model, seqs, [[6, 6], [1, 1], [1, 1]])


def test_chunked_prefill_mixed_with_decodes_and_idle_sequences(model):
    seqs = [tokens(3 + 4), tokens(4 + 3 + 2 + 1), tokens(2 + 2)]
    schedule = [[3, 4, 0], [1, 3, 2], [1, 2, 0], [1, 1, 1], [1, 0, 1]]
    check_against_alone(model, seqs, schedule)


def test_buffers_grow_past_their_capacity(model):
    seqs = [tokens(300 + 2), tokens(20 + 2)]
    check_against_alone(model, seqs, [[300, 20], [1, 1], [1, 1]])


def test_prepare_rejects_bad_counts():
    cache = ContiguousKVCache(CONFIG, 2)
    with pytest.raises(ValueError, match="2 sequences"):
        cache.prepare([1, 1, 1])
    with pytest.raises(ValueError, match="not all zero"):
        cache.prepare([0, 0])
    with pytest.raises(ValueError, match=">= 0"):
        cache.prepare([2, -1])


def test_forward_without_prepare_is_an_error(model):
    cache = ContiguousKVCache.for_model(model, 1)
    q = mx.zeros((1, 4, 16))
    with pytest.raises(RuntimeError, match="prepare"):
        cache(0, q, mx.zeros((1, 4, 16)))  # kv: 2 key heads, then 2 value heads
