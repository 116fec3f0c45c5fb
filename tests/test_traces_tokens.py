"""Synthetic prompt tokens: equal hashes give equal blocks, determinism, lengths, ranges."""
import numpy as np
import pandas as pd
import pytest

from testbed.traces import Trace, load_trace, synthesize_prompt_tokens, with_prompt_tokens
from testbed.traces.tokens import QWEN2_FIRST_SPECIAL_ID

VOCAB = 151_936


def hashed(prompt_len, block_hashes, block_size=4) -> Trace:
    n = len(prompt_len)
    df = pd.DataFrame({"request_id": [f"r{i}" for i in range(n)], "arrival_s": [0.0] * n,
                       "prompt_len": prompt_len, "output_len": [1] * n,
                       "block_hashes": block_hashes})
    return Trace(df, hash_block_size=block_size)


def test_same_hash_same_block_across_requests():
    trace = hashed([12, 10, 8, 3], [[1, 2, 3], [1, 2, 9], [5, 2], [1]])
    a, b, c, d = synthesize_prompt_tokens(trace, VOCAB, seed=0)
    np.testing.assert_array_equal(a[:8], b[:8])  # hashes 1, 2 shared
    np.testing.assert_array_equal(a[4:8], c[4:8])  # hash 2 in another position
    assert not np.array_equal(a[8:10], b[8:10])  # hashes 3 and 9 differ
    assert not np.array_equal(a[:4], c[:4])  # hashes 1 and 5 differ
    np.testing.assert_array_equal(b[8:10], synthesize_prompt_tokens(
        hashed([12], [[0, 0, 9]]), VOCAB)[0][8:10])  # a short last block: its hash's prefix
    np.testing.assert_array_equal(d, a[:3])


def test_different_hashes_give_different_blocks_on_mooncake():
    trace = load_trace("mooncake_synthetic")
    subset = trace.replace(trace.df.iloc[:300])
    tokens = synthesize_prompt_tokens(subset, VOCAB, seed=7)
    blocks: dict[int, bytes] = {}
    for ids, hashes, n in zip(tokens, subset.df["block_hashes"], subset.df["prompt_len"]):
        assert len(ids) == n
        for k, h in enumerate(hashes):
            block = ids[k * 512:(k + 1) * 512]
            if len(block) == 512:
                blocks.setdefault(int(h), block.tobytes())
                assert blocks[int(h)] == block.tobytes()
    assert len(set(blocks.values())) == len(blocks)  # distinct hashes, distinct blocks


def test_lengths_ranges_and_determinism():
    code = load_trace("azure_code")
    trace = code.replace(code.df.iloc[:200])
    first = synthesize_prompt_tokens(trace, VOCAB, seed=3, low=1000, high=1100)
    again = synthesize_prompt_tokens(trace, VOCAB, seed=3, low=1000, high=1100)
    other = synthesize_prompt_tokens(trace, VOCAB, seed=4, low=1000, high=1100)
    assert [len(t) for t in first] == trace.df["prompt_len"].tolist()
    for a, b, c in zip(first, again, other):
        np.testing.assert_array_equal(a, b)
        assert a.min() >= 1000 and a.max() < 1100
        assert not np.array_equal(a, c)
    counts = np.bincount(np.concatenate(first) - 1000, minlength=100)
    assert counts.min() > 0.8 * counts.mean()  # spread over the whole range


def test_requests_without_hashes_share_nothing_and_follow_their_id():
    df = pd.DataFrame({"request_id": ["a", "b"], "arrival_s": [0.0, 1.0],
                       "prompt_len": [64, 64], "output_len": [1, 1]})
    a, b = synthesize_prompt_tokens(Trace(df), VOCAB)
    assert (a[:16] != b[:16]).any()
    reordered = Trace(df.iloc[::-1].assign(arrival_s=[0.0, 1.0]))
    b2, a2 = synthesize_prompt_tokens(reordered, VOCAB)
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_array_equal(b, b2)


def test_default_range_avoids_qwen2_special_tokens():
    trace = hashed([4096], [list(range(1024))])
    ids = synthesize_prompt_tokens(trace, VOCAB)[0]
    assert ids.max() < QWEN2_FIRST_SPECIAL_ID
    small = synthesize_prompt_tokens(trace, 300)[0]
    assert small.max() < 300 and small.min() >= 0
    with pytest.raises(ValueError, match=r"\[0, 500\) must lie within the vocabulary"):
        synthesize_prompt_tokens(trace, 300, high=500)


def test_with_prompt_tokens_feeds_requests():
    trace = load_trace("example_bailian")
    got = with_prompt_tokens(trace, VOCAB, seed=1)
    requests = got.to_requests()
    by_id = {r.request_id: r for r in requests}
    # chat 1 (hashes 1, 2, 3) and chat 3 (hashes 1, 2, 5, ...) share 32 tokens, not 33.
    assert by_id["1"].prompt_token_ids[:32] == by_id["3"].prompt_token_ids[:32]
    assert by_id["1"].prompt_token_ids[32] != by_id["3"].prompt_token_ids[32]
    assert all(len(r.prompt_token_ids) == r.prompt_len for r in requests)
    assert by_id["3"].block_hashes == [1, 2, 5, 6, 7] and by_id["3"].hash_block_size == 16
    assert with_prompt_tokens(got, VOCAB, seed=2) is got  # ids it has are kept
    texts = trace.replace(trace.df.assign(prompt_text="hello"))
    with pytest.raises(ValueError, match="has prompt_text: tokenize it"):
        with_prompt_tokens(texts, VOCAB)
