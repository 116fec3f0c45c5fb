"""Trace transforms: window, rate and length scaling, clipping, sampling, config specs."""
import numpy as np
import pandas as pd
import pytest

from testbed.traces import Trace, apply_transforms, build_trace, load_trace
from testbed.traces.load import TRACES_DIR
from testbed.traces.transforms import (clip_lengths, head, length_scale, rate_scale, sample,
                                       window)


@pytest.fixture(scope="module")
def conv():
    return load_trace("azure_conv")


def small(**columns) -> Trace:
    n = len(columns["prompt_len"])
    df = pd.DataFrame({"request_id": [f"r{i}" for i in range(n)],
                       "arrival_s": np.arange(n, dtype=float), "output_len": [5] * n, **columns})
    return Trace(df, name="small", hash_block_size=4)


def test_window_selects_and_rezeroes(conv):
    got = window(conv, 600.0, 1200.0)
    arrival = conv.df["arrival_s"].to_numpy()
    inside = (arrival >= 600.0) & (arrival < 1200.0)
    assert len(got) == inside.sum()
    np.testing.assert_allclose(got.df["arrival_s"], arrival[inside] - 600.0)
    assert got.df["request_id"].tolist() == conv.df["request_id"][inside].tolist()
    assert got.df["arrival_s"].min() >= 0 and got.df["arrival_s"].max() < 600.0
    assert got.notes[-1].startswith("window [600.0, 1200.0)")
    assert len(window(conv, 3000.0)) == (arrival >= 3000.0).sum()
    with pytest.raises(ValueError, match="holds no requests"):
        window(conv, 9000.0, 9100.0)


@pytest.mark.parametrize("factor", [0.5, 3.0])
def test_rate_scale(conv, factor):
    got = rate_scale(conv, factor)
    assert got.stats()["rate_per_s"] == pytest.approx(conv.stats()["rate_per_s"] * factor)
    np.testing.assert_allclose(got.df["arrival_s"] * factor, conv.df["arrival_s"])
    assert got.df["prompt_len"].equals(conv.df["prompt_len"])


def test_length_scale_rounds_and_keeps_one(conv):
    got = length_scale(conv, prompt=0.5, output=0.001)
    assert got.df["prompt_len"].tolist() == np.maximum(
        np.rint(conv.df["prompt_len"] * 0.5), 1).astype(int).tolist()
    assert got.df["output_len"].min() == 1


def test_clip_bounds(conv):
    got = clip_lengths(conv, prompt_min=100, prompt_max=2000, output_max=64)
    assert got.df["prompt_len"].between(100, 2000).all()
    assert got.df["output_len"].max() == 64 and got.df["output_len"].min() == conv.df["output_len"].min()
    untouched = conv.df["prompt_len"].between(100, 2000)
    assert got.df["prompt_len"][untouched].equals(conv.df["prompt_len"][untouched])
    with pytest.raises(ValueError, match="bounds"):
        clip_lengths(conv, prompt_min=10, prompt_max=5)


def test_head_and_sample_sizes(conv):
    assert head(conv, 100).df.equals(conv.df.iloc[:100])
    got = sample(conv, n=500, seed=1)
    assert len(got) == 500 and got.df["request_id"].is_unique
    assert got.df["arrival_s"].is_monotonic_increasing
    assert set(got.df["request_id"]) <= set(conv.df["request_id"])
    assert len(sample(conv, fraction=0.1)) == round(0.1 * len(conv))
    pd.testing.assert_frame_equal(sample(conv, n=50, seed=3).df, sample(conv, n=50, seed=3).df)
    assert not sample(conv, n=50, seed=3).df.equals(sample(conv, n=50, seed=4).df)
    with pytest.raises(ValueError, match="give n or fraction"):
        sample(conv)
    with pytest.raises(ValueError, match=r"n must be in \[1, 19366\]"):
        sample(conv, n=10**6)


def test_shorter_prompts_keep_prefixes_of_hashes_and_ids():
    trace = small(prompt_len=[10, 3], block_hashes=[[1, 2, 3], [4]],
                  prompt_token_ids=[list(range(10)), [7, 8, 9]])
    got = clip_lengths(trace, prompt_max=5)
    assert got.df["prompt_len"].tolist() == [5, 3]
    assert [list(h) for h in got.df["block_hashes"]] == [[1, 2], [4]]
    assert [list(t) for t in got.df["prompt_token_ids"]] == [[0, 1, 2, 3, 4], [7, 8, 9]]
    with pytest.raises(ValueError, match="'r1' would grow from 3 to 4 prompt tokens"):
        clip_lengths(trace, prompt_min=4)
    with pytest.raises(ValueError, match="prompt_text"):
        length_scale(small(prompt_len=[4], prompt_text=["hi"]), prompt=2)


def test_apply_transforms_from_a_config_mapping(conv):
    spec = {"window": {"start_s": 0, "end_s": 600}, "rate_scale": 2.0,
            "clip_lengths": {"prompt_max": 1024}, "head": 100}
    got = apply_transforms(conv, spec)
    expected = head(clip_lengths(rate_scale(window(conv, 0, 600), 2.0), prompt_max=1024), 100)
    pd.testing.assert_frame_equal(got.df, expected.df)
    assert len(got.notes) == 4
    twice = apply_transforms(conv, [{"rate_scale": 2}, {"rate_scale": 2}])
    np.testing.assert_allclose(twice.df["arrival_s"] * 4, conv.df["arrival_s"])
    assert apply_transforms(conv, None) is conv
    listed = {"window": None, "sample": None, "head": 7, "rate_scale": None}  # null: left out
    pd.testing.assert_frame_equal(apply_transforms(conv, listed).df, head(conv, 7).df)


def test_apply_transforms_errors(conv):
    with pytest.raises(ValueError, match="unknown trace transform 'shift'"):
        apply_transforms(conv, {"shift": 1})
    with pytest.raises(ValueError, match="transform 'window'.*its options: start_s, end_s"):
        apply_transforms(conv, {"window": {"begin": 1}})
    with pytest.raises(ValueError, match="one {name: options} mapping"):
        apply_transforms(conv, [{"head": 1, "rate_scale": 2}])


def test_build_trace_from_config_specs():
    got = build_trace({"name": "azure_code", "transforms": {"head": 10}})
    assert len(got) == 10 and got.name == "azure_code"
    vidur = build_trace({"format": "vidur", "path": TRACES_DIR / "examples/vidur_example.csv"})
    assert len(vidur) == 8
    synthetic = build_trace({"synthetic": {"n": 50, "arrivals": {"kind": "poisson", "rate": 1},
                                           "prompt_len": 8, "output_len": 4, "seed": 1}})
    assert len(synthetic) == 50 and synthetic.df["prompt_len"].eq(8).all()
    with pytest.raises(ValueError, match="exactly one of"):
        build_trace({"name": "azure_code", "format": "azure"})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['windows'\]"):
        build_trace({"name": "azure_code", "windows": {}})
