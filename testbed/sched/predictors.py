"""Output-length predictors for shortest-job-first scheduling.

`oracle` reads the trace's output length (the upper bound on what SJF can gain);
`learned` predicts the running mean output length of finished requests whose prompt fell in
the same power-of-two length bucket, falling back to the mean over all finished requests,
then to a configured default before anything finished.
"""
from __future__ import annotations

from typing import Protocol

from testbed.registry import Registry
from testbed.request import Request, Sequence
from testbed.sched.config import SchedulerConfig


class LengthPredictor(Protocol):
    def predict(self, request: Request) -> float:
        """Expected number of output tokens."""

    def observe(self, seq: Sequence) -> None:
        """Learn from a finished sequence."""


class OraclePredictor:
    def predict(self, request: Request) -> float:
        return float(request.output_len)

    def observe(self, seq: Sequence) -> None:
        pass


class BucketMeanPredictor:
    def __init__(self, default_len: int = 256):
        self.default_len = float(default_len)
        self._sums: dict[int, list[float]] = {}  # bucket -> [total output tokens, count]
        self._total = [0.0, 0.0]

    @staticmethod
    def bucket(prompt_len: int) -> int:
        return max(prompt_len, 1).bit_length()  # bucket b holds prompts of [2^(b-1), 2^b) tokens

    def predict(self, request: Request) -> float:
        total, count = self._sums.get(self.bucket(request.prompt_len), self._total)
        if count == 0:
            return self.default_len
        return total / count

    def observe(self, seq: Sequence) -> None:
        n = float(seq.num_output_tokens)
        sums = self._sums.setdefault(self.bucket(seq.prompt_len), [0.0, 0.0])
        for acc in (sums, self._total):
            acc[0] += n
            acc[1] += 1


PREDICTORS: Registry[LengthPredictor] = Registry("length predictor")  # factories of a SchedulerConfig
PREDICTORS.register("oracle")(lambda config: OraclePredictor())
PREDICTORS.register("learned")(lambda config: BucketMeanPredictor(config.predictor_default_len))


def make_predictor(config: SchedulerConfig) -> LengthPredictor:
    return PREDICTORS.get(config.predictor)(config)
