"""Synthetic traces: an arrival process and length distributions, all seeded.

Arrival processes start at t = 0 and return event times: `poisson(rate)`,
`gamma(rate, cv)` (renewal process with gamma gaps: cv > 1 burstier than Poisson, cv < 1
smoother), `bursts(rates, durations)` (Poisson with a piecewise-constant rate cycling through
phases; a rate of 0 is an off phase), `fixed(interval)`. Lengths are `fixed(value)`,
`uniform(low, high)` (inclusive) or `lognormal(mean, cv)` (rounded, at least 1), or pairs
resampled from another trace. Configs name them as dicts: `{"kind": "gamma", "rate": 4,
"cv": 2}`. Arrivals and lengths draw from independent streams of the seed, so changing the
length distribution leaves the arrival times as they were.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

from testbed.registry import Registry
from testbed.traces.load import load_trace
from testbed.traces.schema import Trace


class ArrivalProcess(Protocol):
    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray: ...


class LengthDistribution(Protocol):
    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray: ...


ARRIVALS: Registry[ArrivalProcess] = Registry("arrival process")
LENGTHS: Registry[LengthDistribution] = Registry("length distribution")


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


@ARRIVALS.register("poisson")
@dataclass(frozen=True, slots=True)
class Poisson:
    """Exponential gaps with mean 1/rate (requests per second)."""

    rate: float

    def __post_init__(self) -> None:
        _positive("poisson rate", self.rate)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.cumsum(rng.exponential(1.0 / self.rate, n))


@ARRIVALS.register("gamma")
@dataclass(frozen=True, slots=True)
class Gamma:
    """Gamma gaps with mean 1/rate and coefficient of variation cv (cv = 1 is Poisson)."""

    rate: float
    cv: float

    def __post_init__(self) -> None:
        _positive("gamma rate", self.rate)
        _positive("gamma cv (for cv = 0 use fixed arrivals)", self.cv)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        shape = 1.0 / self.cv**2
        return np.cumsum(rng.gamma(shape, 1.0 / (self.rate * shape), n))


@ARRIVALS.register("bursts")
@dataclass(frozen=True, slots=True)
class Bursts:
    """Poisson arrivals whose rate follows `rates[i]` for `durations[i]` seconds, cycling.
    `rates=(20, 0), durations=(5, 25)` is 5 s bursts at 20 req/s every 30 s."""

    rates: tuple[float, ...]
    durations: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "rates", tuple(float(r) for r in self.rates))
        object.__setattr__(self, "durations", tuple(float(d) for d in self.durations))
        if len(self.rates) != len(self.durations) or not self.rates:
            raise ValueError(f"bursts: {len(self.rates)} rates for {len(self.durations)} "
                             "durations; give one rate per phase duration")
        if min(self.rates) < 0 or not max(self.rates) > 0:
            raise ValueError(f"bursts rates {self.rates}: none negative, at least one > 0")
        for d in self.durations:
            _positive("bursts duration", d)

    @property
    def mean_rate(self) -> float:
        return float(np.dot(self.rates, self.durations) / sum(self.durations))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        # Time rescaling: unit-rate Poisson events mapped through the inverse of the
        # cumulative intensity. Zero-rate phases hold no intensity and are skipped over.
        rates, durations = np.asarray(self.rates), np.asarray(self.durations)
        phase_mass = rates * durations
        mass_start = np.concatenate([[0.0], np.cumsum(phase_mass)[:-1]])
        time_start = np.concatenate([[0.0], np.cumsum(durations)[:-1]])
        cycle_mass, cycle_time = phase_mass.sum(), durations.sum()
        events = np.cumsum(rng.exponential(1.0, n))
        cycles, rest = np.divmod(events, cycle_mass)
        phase = np.searchsorted(mass_start, rest, side="right") - 1
        return cycles * cycle_time + time_start[phase] + (rest - mass_start[phase]) / rates[phase]


@ARRIVALS.register("fixed")
@dataclass(frozen=True, slots=True)
class FixedInterval:
    """One request every `interval` seconds (the first at `interval`)."""

    interval: float

    def __post_init__(self) -> None:
        _positive("fixed interval", self.interval)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.interval * np.arange(1, n + 1, dtype=np.float64)


@LENGTHS.register("fixed")
@dataclass(frozen=True, slots=True)
class FixedLength:
    value: int

    def __post_init__(self) -> None:
        _positive("fixed length", self.value)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.full(n, int(self.value), dtype=np.int64)


@LENGTHS.register("uniform")
@dataclass(frozen=True, slots=True)
class UniformLength:
    """Integers from `low` to `high`, both included."""

    low: int
    high: int

    def __post_init__(self) -> None:
        if not 0 < self.low <= self.high:
            raise ValueError(f"uniform lengths need 0 < low <= high, got {self.low}, {self.high}")

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(self.low, self.high, n, endpoint=True, dtype=np.int64)


@LENGTHS.register("lognormal")
@dataclass(frozen=True, slots=True)
class LogNormalLength:
    """Log-normal with the given mean and coefficient of variation, rounded, at least 1."""

    mean: float
    cv: float

    def __post_init__(self) -> None:
        _positive("lognormal mean", self.mean)
        _positive("lognormal cv", self.cv)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        sigma2 = np.log1p(self.cv**2)
        values = rng.lognormal(np.log(self.mean) - sigma2 / 2, np.sqrt(sigma2), n)
        return np.maximum(np.rint(values), 1).astype(np.int64)


def arrival_process(spec: ArrivalProcess | Mapping) -> ArrivalProcess:
    """An arrival process from a config dict (`{"kind": "poisson", "rate": 2}`)."""
    return _from_spec(ARRIVALS, spec)


def length_distribution(spec: LengthDistribution | Mapping | int) -> LengthDistribution:
    """A length distribution from a config dict, or an int for a fixed length."""
    if isinstance(spec, (int, np.integer)):
        return FixedLength(int(spec))
    return _from_spec(LENGTHS, spec)


def _from_spec(registry: Registry, spec):
    if not isinstance(spec, Mapping):
        return spec
    options = dict(spec)
    if "kind" not in options:
        raise ValueError(f"{registry.kind} {options}: needs a 'kind' ({', '.join(registry.names())})")
    kind = options.pop("kind")
    try:
        return registry.create(kind, **options)
    except TypeError as e:
        raise ValueError(f"{registry.kind} {kind!r}: {e}") from None


def synthetic_trace(n: int, arrivals: ArrivalProcess | Mapping,
                    prompt_len: LengthDistribution | Mapping | int | None = None,
                    output_len: LengthDistribution | Mapping | int | None = None,
                    lengths_from: Trace | str | None = None, seed: int = 0,
                    name: str = "synthetic") -> Trace:
    """`n` requests with arrival times from `arrivals` and lengths either drawn from
    `prompt_len` / `output_len` or resampled as (prompt, output) pairs from `lengths_from`
    (a Trace or a shipped trace's name), keeping the correlation between the two."""
    if n <= 0:
        raise ValueError(f"synthetic trace: n must be > 0, got {n}")
    if (lengths_from is None) == (prompt_len is None or output_len is None):
        raise ValueError("synthetic trace: give prompt_len and output_len, or lengths_from")
    process = arrival_process(arrivals)
    arrival_rng, length_rng = (np.random.default_rng(s)
                               for s in np.random.SeedSequence(seed).spawn(2))
    times = process.sample(n, arrival_rng)
    if isinstance(lengths_from, str):
        lengths_from = load_trace(lengths_from)
    if lengths_from is not None:
        rows = length_rng.integers(0, len(lengths_from), n)
        prompts = lengths_from.df["prompt_len"].to_numpy()[rows]
        outputs = lengths_from.df["output_len"].to_numpy()[rows]
        lengths = f"lengths resampled from {lengths_from.name}"
    else:
        prompt_dist, output_dist = length_distribution(prompt_len), length_distribution(output_len)
        prompts, outputs = prompt_dist.sample(n, length_rng), output_dist.sample(n, length_rng)
        lengths = f"prompt {prompt_dist}, output {output_dist}"
    df = pd.DataFrame({"request_id": np.arange(n).astype(str).astype(object),
                       "arrival_s": times, "prompt_len": prompts, "output_len": outputs})
    return Trace(df, name=name, source="synthetic",
                 notes=(f"{n} requests, arrivals {process}, {lengths}, seed {seed}",))
