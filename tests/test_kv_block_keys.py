"""Block content keys: tokens, trace block hashes (both size relations), unique fallbacks;
and the same cache hits whether a workload is described by hashes or by tokens made from them."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testbed.kv import make_kv_manager
from testbed.kv.block_keys import block_content_key, check_block_hashes
from testbed.request import Request, Sequence


def seq_of(prompt_len, tokens=None, hashes=None, h=0, outputs=(), rid="r") -> Sequence:
    seq = Sequence(0, Request(rid, 0.0, prompt_len, 8, prompt_token_ids=tokens,
                              block_hashes=hashes, hash_block_size=h))
    seq.output_token_ids.extend(outputs)
    return seq


def test_token_keys_include_generated_tokens():
    seq = seq_of(6, tokens=[1, 2, 3, 4, 5, 6], outputs=[7, 8, 9])
    assert block_content_key(seq, 0, 4) == (1, 2, 3, 4)
    assert block_content_key(seq, 1, 4) == (5, 6, 7, 8)
    assert block_content_key(seq_of(4, tokens=[5, 6, 7, 8]), 0, 4) == (5, 6, 7, 8)


def test_hash_keys_when_kv_blocks_split_a_hash_block():
    seq = seq_of(20, hashes=[11, 22, 33], h=8)  # 8 + 8 + 4 prompt tokens
    keys = [block_content_key(seq, i, 4) for i in range(5)]
    assert keys[:4] == [("hash", 8, 11, 0), ("hash", 8, 11, 1), ("hash", 8, 22, 0), ("hash", 8, 22, 1)]
    assert keys[4] == ("hash", 8, 33, 0)  # the first half of a short last hash block
    assert block_content_key(seq, 5, 4) == ("request", "r", 5)  # past the prompt


def test_hash_keys_when_a_kv_block_spans_hash_blocks():
    seq = seq_of(14, hashes=[11, 22, 33, 44], h=4)
    assert block_content_key(seq, 0, 8) == ("hash", 4, 11, 22)
    assert block_content_key(seq, 1, 8) == ("request", "r", 1)  # ends past the prompt (16 > 14)


def test_missing_hashes_and_no_data_give_keys_unique_to_the_request():
    assert block_content_key(seq_of(16, hashes=[11], h=4), 1, 4) == ("request", "r", 1)
    assert block_content_key(seq_of(16, rid="x"), 0, 4) == ("request", "x", 0)
    assert block_content_key(seq_of(16, rid="y"), 0, 4) != block_content_key(seq_of(16, rid="x"), 0, 4)


def test_incompatible_hash_block_size_is_an_error():
    with pytest.raises(ValueError, match="block size 6 and hash block size 16"):
        check_block_hashes(seq_of(32, hashes=[1, 2], h=16).request, 6)
    with pytest.raises(ValueError, match="hash_block_size is 0"):
        check_block_hashes(seq_of(32, hashes=[1, 2], h=0).request, 16)
    kv = make_kv_manager("prefix", 8, 6)
    with pytest.raises(ValueError, match="do not divide"):
        kv.can_ever_fit(seq_of(32, hashes=[1, 2], h=16))
    check_block_hashes(seq_of(32, hashes=[1, 2], h=16, tokens=list(range(32))).request, 6)  # tokens win


def tokens_for(hashes: list[int], h: int, prompt_len: int) -> list[int]:
    """What a trace loader synthesizes: one fixed token block per hash id."""
    return [t for hid in hashes for t in range(hid * 1000, hid * 1000 + h)][:prompt_len]


@st.composite
def hashed_workloads(draw):
    B = draw(st.sampled_from([2, 4, 8]))
    h = draw(st.sampled_from(sorted({max(1, B // 2), B, 2 * B})))
    reqs = []
    for _ in range(draw(st.integers(1, 12))):
        hashes = draw(st.lists(st.integers(1, 3), min_size=1, max_size=5))
        prompt_len = draw(st.integers((len(hashes) - 1) * h + 1, len(hashes) * h))
        reqs.append((hashes, prompt_len, draw(st.booleans())))  # (.., keep it running)
    return B, h, reqs, draw(st.integers(4, 24)), draw(st.sampled_from(["prefix", "radix"]))


@settings(max_examples=60, deadline=None)
@given(hashed_workloads())
def test_hashes_and_tokens_made_from_them_hit_the_same_blocks(w):
    B, h, reqs, num_blocks, manager = w
    by_hash = make_kv_manager(manager, num_blocks, B)
    by_token = make_kv_manager(manager, num_blocks, B)
    for i, (hashes, prompt_len, keep) in enumerate(reqs):
        a = Sequence(i, Request(f"r{i}", 0.0, prompt_len, 1, block_hashes=hashes, hash_block_size=h))
        b = Sequence(i, Request(f"r{i}", 0.0, prompt_len, 1,
                                prompt_token_ids=tokens_for(hashes, h, prompt_len)))
        assert by_hash.lookup(a) == by_token.lookup(b)
        ok = by_hash.allocate(a, prompt_len)
        assert ok == by_token.allocate(b, prompt_len)
        assert a.block_table == b.block_table
        if not ok:
            continue
        for s, kv in ((a, by_hash), (b, by_token)):
            s.num_computed_tokens = prompt_len
            kv.commit(s)
        if not keep:
            by_hash.free(a)
            by_token.free(b)
        assert by_hash.cached_blocks() == by_token.cached_blocks()
    assert by_hash.stats.as_dict() == by_token.stats.as_dict()
