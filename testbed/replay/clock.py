"""Clocks for the serving loop.

`virtual`: simulated time. It advances by each step's duration (measured by the real engine,
predicted by the simulator) and jumps over idle gaps, so an hour of sparse trace replays in
minutes with the same queueing. `wall`: real time; arrivals wait for the wall clock and step
durations are whatever really elapsed.
"""
from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    @property
    def now(self) -> float: ...
    def advance(self, seconds: float) -> None: ...
    def wait_until(self, t: float) -> None: ...


class VirtualClock:
    def __init__(self, start: float = 0.0):
        self._now = start

    @property
    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds

    def wait_until(self, t: float) -> None:
        self._now = max(self._now, t)


class WallClock:
    def __init__(self):
        self._t0 = time.perf_counter()

    @property
    def now(self) -> float:
        return time.perf_counter() - self._t0

    def advance(self, seconds: float) -> None:
        pass  # the step's time has really passed

    def wait_until(self, t: float) -> None:
        delay = t - self.now
        if delay > 0:
            time.sleep(delay)


def make_clock(kind: str) -> Clock:
    if kind == "virtual":
        return VirtualClock()
    if kind == "wall":
        return WallClock()
    raise ValueError(f"unknown clock {kind!r}; choose one of: virtual, wall")
