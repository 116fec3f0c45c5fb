"""The batched sampler: greedy, temperature, top-k, top-p, seeded per request."""
import mlx.core as mx
import numpy as np
import pytest

from testbed.model.sampling import sample, sample_sequences
from testbed.request import Request, SamplingParams, Sequence

rng = np.random.default_rng(0)


def draw(logits: np.ndarray, params: SamplingParams, n: int) -> np.ndarray:
    """`n` independent draws from one row of logits: n rows, seeds 0..n-1, token index 0."""
    rows = mx.array(np.broadcast_to(logits, (n, logits.shape[-1])).copy())
    seeded = [SamplingParams(temperature=params.temperature, top_k=params.top_k,
                             top_p=params.top_p, seed=s) for s in range(n)]
    return np.array(sample(rows, seeded, [0] * n))


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def test_greedy_is_argmax_per_row():
    logits = rng.standard_normal((6, 300)).astype(np.float32)
    out = sample(mx.array(logits), [SamplingParams()] * 6, range(6))
    assert out.dtype == mx.int32
    assert np.array(out).tolist() == logits.argmax(-1).tolist()


def test_greedy_rows_stay_greedy_in_a_mixed_batch():
    logits = rng.standard_normal((4, 50)).astype(np.float32)
    params = [SamplingParams(), SamplingParams(temperature=1.0, seed=1),
              SamplingParams(), SamplingParams(temperature=2.0, top_k=5, seed=2)]
    out = np.array(sample(mx.array(logits), params, [0, 0, 0, 0]))
    assert out[0] == logits[0].argmax() and out[2] == logits[2].argmax()


def test_temperature_frequencies_follow_softmax():
    logits = np.array([2.0, 1.0, 0.5, 0.0, -1.0], np.float32)
    for temperature in (0.7, 1.5):
        counts = np.bincount(draw(logits, SamplingParams(temperature=temperature), 6000),
                             minlength=5)
        np.testing.assert_allclose(counts / 6000, softmax(logits / temperature), atol=0.025)


def test_top_k_never_leaves_the_top_k():
    logits = rng.standard_normal(200).astype(np.float32)
    top = set(np.argsort(-logits)[:7].tolist())
    out = draw(logits, SamplingParams(temperature=5.0, top_k=7), 2000)
    assert set(out.tolist()) <= top
    assert len(set(out.tolist())) == 7  # a hot temperature reaches all of them


def test_top_k_frequencies_are_the_renormalized_softmax():
    logits = np.array([1.0, 0.8, 0.3, 2.0, -0.5, 0.9], np.float32)
    counts = np.bincount(draw(logits, SamplingParams(temperature=1.0, top_k=3), 6000),
                         minlength=6)
    expected = np.zeros(6)
    keep = np.argsort(-logits)[:3]
    expected[keep] = softmax(logits[keep])
    np.testing.assert_allclose(counts / 6000, expected, atol=0.025)


def nucleus(probs: np.ndarray, top_p: float) -> set[int]:
    """Brute force: the smallest set of most likely tokens whose mass reaches top_p."""
    order = np.argsort(-probs)
    for size in range(1, len(probs) + 1):
        if probs[order[:size]].sum() >= top_p:
            return set(order[:size].tolist())
    return set(order.tolist())


@pytest.mark.parametrize("top_p", [0.3, 0.6, 0.75, 0.9, 0.97])
def test_top_p_keeps_the_smallest_nucleus(top_p):
    probs = np.array([0.05, 0.3, 0.02, 0.5, 0.13], np.float64)
    logits = np.log(probs).astype(np.float32)
    out = draw(logits, SamplingParams(temperature=1.0, top_p=top_p), 3000)
    expected = nucleus(probs, top_p)
    assert set(out.tolist()) == expected
    counts = np.bincount(out, minlength=5) / 3000
    renormalized = np.where(np.isin(np.arange(5), list(expected)), probs, 0)
    np.testing.assert_allclose(counts, renormalized / renormalized.sum(), atol=0.03)


def test_top_k_and_top_p_combine():
    probs = np.array([0.4, 0.3, 0.2, 0.1])
    # top_k=3 renormalizes to 4/9, 3/9, 2/9; top_p=0.7 then keeps the first two (7/9 >= 0.7).
    out = draw(np.log(probs).astype(np.float32), SamplingParams(1.0, top_k=3, top_p=0.7), 1000)
    assert set(out.tolist()) == {0, 1}


def test_same_seed_same_tokens_different_seed_different():
    logits = mx.array(rng.standard_normal((1, 1000)).astype(np.float32))

    def tokens(seed):
        return [int(sample(logits, [SamplingParams(1.0, seed=seed)], [i]).item())
                for i in range(20)]

    assert tokens(7) == tokens(7)
    assert tokens(7) != tokens(8)
    assert len(set(tokens(7))) > 10  # the token index changes the key too


def test_a_request_samples_the_same_tokens_alone_and_batched():
    vocab = 400
    mine = rng.standard_normal(vocab).astype(np.float32)
    params = SamplingParams(temperature=0.9, top_p=0.95, top_k=50, seed=1234)
    alone = [int(sample(mx.array(mine[None]), [params], [i]).item()) for i in range(10)]
    others = [SamplingParams(1.3, seed=5), SamplingParams(), SamplingParams(0.5, top_k=3)]
    batched = []
    for i in range(10):
        rows = np.stack([rng.standard_normal(vocab), mine, rng.standard_normal(vocab),
                         rng.standard_normal(vocab)]).astype(np.float32)
        out = sample(mx.array(rows), [others[0], params, others[1], others[2]], [3, i, 0, 9])
        batched.append(int(out[1].item()))
    assert alone == batched


def test_unseeded_requests_still_sample():
    logits = mx.array(np.zeros((2, 1000), np.float32))
    draws = {tuple(np.array(sample(logits, [SamplingParams(1.0)] * 2, [0, 0])).tolist())
             for _ in range(5)}
    assert len(draws) > 1


def test_sample_sequences_uses_each_requests_seed_and_output_index():
    logits = mx.array(rng.standard_normal((2, 300)).astype(np.float32))
    seqs = []
    for seq_id, seed in enumerate((11, 12)):
        req = Request(f"r{seq_id}", 0.0, 3, 10, prompt_token_ids=[1, 2, 3],
                      sampling=SamplingParams(temperature=1.0, seed=seed))
        seqs.append(Sequence(seq_id, req, output_token_ids=[5] * (seq_id + 2)))
    expected = sample(logits, [SamplingParams(1.0, seed=11), SamplingParams(1.0, seed=12)],
                      [2, 3])
    assert np.array(sample_sequences(seqs, logits)).tolist() == np.array(expected).tolist()


@pytest.mark.parametrize("params,match", [
    (SamplingParams(temperature=-1.0), "temperature"),
    (SamplingParams(temperature=1.0, top_k=-2), "top_k"),
    (SamplingParams(temperature=1.0, top_p=0.0), "top_p"),
    (SamplingParams(temperature=1.0, top_p=1.5), "top_p"),
])
def test_bad_parameters_are_rejected(params, match):
    with pytest.raises(ValueError, match=match):
        sample(mx.zeros((1, 10)), [params], [0])


def test_rows_params_and_indices_must_line_up():
    with pytest.raises(ValueError, match="one row per params"):
        sample(mx.zeros((2, 10)), [SamplingParams()], [0])
