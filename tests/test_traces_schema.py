"""The Trace schema on in-memory frames, and conversion to Request objects."""
import numpy as np
import pandas as pd
import pytest

from testbed.request import Request, SamplingParams
from testbed.traces import Trace, TraceError, load_trace


def frame(**overrides) -> pd.DataFrame:
    columns = {"request_id": ["a", "b", "c"], "arrival_s": [0.0, 0.5, 0.5],
               "prompt_len": [4, 9, 1], "output_len": [2, 1, 3]}
    columns.update(overrides)
    return pd.DataFrame(columns)


def test_normalizes_types_and_order():
    df = frame(priority=["2", "0", "1"], request_id=[10, 11, 12])[
        ["priority", "output_len", "prompt_len", "arrival_s", "request_id"]]
    trace = Trace(df.set_index(pd.Index([5, 6, 7])), name="t")
    assert list(trace.df.columns) == ["request_id", "arrival_s", "prompt_len", "output_len",
                                      "priority"]
    assert trace.df["request_id"].tolist() == ["10", "11", "12"]
    assert trace.df["priority"].tolist() == [2, 0, 1]
    assert trace.df.index.tolist() == [0, 1, 2]


@pytest.mark.parametrize("overrides,message", [
    ({"prompt_len": [4, 0, 1]}, "row 2, field 'prompt_len': length must be a positive integer"),
    ({"arrival_s": [0.0, 2.0, 1.0]}, "row 3, field 'arrival_s': timestamp goes backwards"),
    ({"arrival_s": [-1.0, 2.0, 3.0]}, "row 1, field 'arrival_s': negative arrival time"),
    ({"arrival_s": [0.0, float("inf"), float("inf")]}, "row 2, field 'arrival_s': arrival time inf"),
    ({"request_id": ["a", "b", "a"]}, "row 3, field 'request_id': duplicate request id 'a'"),
    ({"session_id": ["s", None, "s"]}, "row 2, field 'session_id': expected a string"),
    ({"prompt_token_ids": [[1, 2, 3, 4], [1], [0]]}, "row 2, field 'prompt_token_ids': 1 token ids"),
    ({"prompt_token_ids": [[1, 2, 3, 4], [1.5] * 9, [0]]}, "expected a list of integers"),
    ({"block_hashes": [[1], [2, 3], [4]]}, "block hashes need a hash_block_size > 0"),
    ({"model": ["x", "y", "z"]}, "field 'model': not a trace column"),
])
def test_invalid_frames(overrides, message):
    with pytest.raises(TraceError, match=message.replace("(", r"\(")):
        Trace(frame(**overrides), name="mem")


def test_missing_column_and_empty():
    with pytest.raises(TraceError, match="field 'output_len': missing column"):
        Trace(frame().drop(columns="output_len"))
    with pytest.raises(TraceError, match="no requests"):
        Trace(frame().iloc[:0])


def test_block_hashes_cover_full_blocks_and_maybe_the_partial_one():
    ok = Trace(frame(block_hashes=[[1], [1, 2], []]), hash_block_size=4)  # 4, 9 and 1 tokens
    assert len(ok) == 3
    Trace(frame(block_hashes=[[1], [1, 2, 3], [5]]), hash_block_size=4)
    with pytest.raises(TraceError, match="row 2.*1 block hashes for a prompt of 9 tokens"):
        Trace(frame(block_hashes=[[1], [1], []]), hash_block_size=4)
    with pytest.raises(TraceError, match="row 1.*2 block hashes for a prompt of 4 tokens"):
        Trace(frame(block_hashes=[[1, 2], [1, 2], []]), hash_block_size=4)


def test_to_requests_carries_every_column():
    trace = Trace(frame(prompt_text=["x", "y", "z"], priority=[1, 0, 2],
                        session_id=["s1", "s1", "s2"], block_hashes=[[7], [7, 8, 9], [3]],
                        prompt_token_ids=[[1, 2, 3, 4], list(range(9)), [5]]),
                  hash_block_size=4)
    sampling = SamplingParams(temperature=0.7, top_k=5, seed=3)
    requests = trace.to_requests(sampling=sampling)
    assert requests[1] == Request("b", 0.5, 9, 1, list(range(9)), "y", [7, 8, 9], 4, 0, "s1",
                                  SamplingParams(0.7, 5, 1.0, 3, (), True))
    assert all(type(r.prompt_token_ids[0]) is int and type(r.prompt_len) is int for r in requests)
    assert requests[0].sampling is not requests[1].sampling
    assert sampling.ignore_eos is False
    assert trace.to_requests(ignore_eos=False)[0].sampling.ignore_eos is False


def test_to_requests_minimal_trace():
    requests = load_trace("azure_code").to_requests()
    assert len(requests) == 8819
    first = requests[0]
    assert (first.request_id, first.arrival_s, first.prompt_len, first.output_len) == ("0", 0.0, 4808, 10)
    assert first.prompt_token_ids is None and first.block_hashes is None
    assert first.hash_block_size == 0 and first.priority == 0 and first.sampling.ignore_eos


def test_replace_keeps_metadata_and_adds_notes():
    trace = load_trace("azure_conv")
    smaller = trace.replace(trace.df.iloc[:10], note="first ten")
    assert (smaller.name, smaller.license, smaller.citation) == (trace.name, trace.license,
                                                                 trace.citation)
    assert smaller.notes == trace.notes + ("first ten",)
    assert len(trace) == 19366  # the original is untouched
    assert "19366 requests" in repr(trace)
    stats = smaller.stats()
    assert stats["requests"] == 10
    assert stats["prompt_len_mean"] == pytest.approx(np.mean(trace.df["prompt_len"][:10]))
