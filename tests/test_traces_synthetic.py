"""Synthetic traces: rates, burstiness and lengths within statistical tolerance; seeds."""
import numpy as np
import pandas as pd
import pytest

from testbed.traces import load_trace, synthetic_trace
from testbed.traces.synthetic import Bursts, FixedInterval, Gamma, Poisson

N = 20_000


def gaps(trace):
    return np.diff(np.concatenate([[0.0], trace.df["arrival_s"].to_numpy()]))


def test_poisson_rate_and_cv():
    g = gaps(synthetic_trace(N, {"kind": "poisson", "rate": 5.0}, 100, 10, seed=1))
    # mean gap 0.2 s +- 0.2/sqrt(N) = 0.7%; exponential gaps have CV 1.
    assert 1 / g.mean() == pytest.approx(5.0, rel=0.03)
    assert g.std() / g.mean() == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("cv", [0.5, 2.0, 4.0])
def test_gamma_rate_and_cv(cv):
    g = gaps(synthetic_trace(N, Gamma(rate=8.0, cv=cv), 100, 10, seed=2))
    assert 1 / g.mean() == pytest.approx(8.0, rel=0.03 * cv)
    assert g.std() / g.mean() == pytest.approx(cv, rel=0.12)


def test_bursts_follow_the_phases():
    process = Bursts(rates=(20.0, 0.0, 2.0), durations=(5.0, 10.0, 15.0))
    t = synthetic_trace(N, {"kind": "bursts", "rates": [20, 0, 2], "durations": [5, 10, 15]},
                        100, 10, seed=3).df["arrival_s"].to_numpy()
    phase_of = np.mod(t, 30.0)
    assert not ((phase_of >= 5.0) & (phase_of < 15.0)).any()  # the off phase is silent
    cycles = t[-1] / 30.0
    in_burst = (phase_of < 5.0).sum() / (5.0 * cycles)
    in_slow = (phase_of >= 15.0).sum() / (15.0 * cycles)
    assert in_burst == pytest.approx(20.0, rel=0.05)
    assert in_slow == pytest.approx(2.0, rel=0.08)
    assert len(t) / t[-1] == pytest.approx(process.mean_rate, rel=0.03)


def test_fixed_interval():
    t = synthetic_trace(4, FixedInterval(0.25), 10, 10).df["arrival_s"].tolist()
    assert t == [0.25, 0.5, 0.75, 1.0]


def test_length_distributions():
    trace = synthetic_trace(N, Poisson(1.0), {"kind": "uniform", "low": 10, "high": 20},
                            {"kind": "lognormal", "mean": 200, "cv": 1.5}, seed=4)
    prompt, output = trace.df["prompt_len"].to_numpy(), trace.df["output_len"].to_numpy()
    assert prompt.min() == 10 and prompt.max() == 20
    assert np.bincount(prompt)[10:].min() > N / 11 * 0.85
    assert output.min() >= 1
    assert output.mean() == pytest.approx(200, rel=0.05)
    assert output.std() / output.mean() == pytest.approx(1.5, rel=0.15)


def test_lengths_resampled_from_a_trace_keep_pairs():
    source = load_trace("azure_code")
    trace = synthetic_trace(5000, Poisson(3.0), lengths_from="azure_code", seed=5)
    pairs = set(zip(source.df["prompt_len"], source.df["output_len"]))
    assert set(zip(trace.df["prompt_len"], trace.df["output_len"])) <= pairs
    assert trace.df["prompt_len"].mean() == pytest.approx(source.df["prompt_len"].mean(), rel=0.05)


def test_seeds_reproduce_and_streams_are_independent():
    spec = {"kind": "gamma", "rate": 2.0, "cv": 3.0}
    a = synthetic_trace(500, spec, {"kind": "uniform", "low": 1, "high": 100}, 7, seed=11)
    b = synthetic_trace(500, spec, {"kind": "uniform", "low": 1, "high": 100}, 7, seed=11)
    c = synthetic_trace(500, spec, {"kind": "uniform", "low": 1, "high": 100}, 7, seed=12)
    pd.testing.assert_frame_equal(a.df, b.df)
    assert not np.array_equal(a.df["arrival_s"], c.df["arrival_s"])
    other_lengths = synthetic_trace(500, spec, 64, 7, seed=11)
    np.testing.assert_array_equal(a.df["arrival_s"], other_lengths.df["arrival_s"])


def test_bad_specs_are_clear_errors():
    with pytest.raises(ValueError, match="unknown arrival process 'normal'; choose one of: bursts"):
        synthetic_trace(5, {"kind": "normal"}, 1, 1)
    with pytest.raises(ValueError, match="needs a 'kind'"):
        synthetic_trace(5, {"rate": 1}, 1, 1)
    with pytest.raises(ValueError, match="arrival process 'poisson'.*'lambda'"):
        synthetic_trace(5, {"kind": "poisson", "lambda": 1}, 1, 1)
    with pytest.raises(ValueError, match="gamma cv"):
        Gamma(rate=1, cv=0)
    with pytest.raises(ValueError, match="one rate per phase"):
        Bursts(rates=(1, 2), durations=(1,))
    with pytest.raises(ValueError, match="give prompt_len and output_len, or lengths_from"):
        synthetic_trace(5, Poisson(1), 10, 10, lengths_from="azure_code")
