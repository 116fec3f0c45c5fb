"""The server's `/metrics`: Prometheus text exposition format, version 0.0.4.

Gauges come from the engine loop's published state; counters and histograms are updated on
the loop thread as steps run and requests end. Latencies are on the engine's clock and
follow `testbed.metrics` (TTFT from arrival to first token; TPOT per finished request with
more than one output token).
"""
from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable, Sequence as Seq

from testbed.engine.engine import Engine, StepOutput
from testbed.metrics import request_latencies
from testbed.request import Request, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "testbed_"

# Upper bounds in seconds (as vLLM's), from a fast GPU to a loaded CPU.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0)
TPOT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
                1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)


class Histogram:
    """Counts per bucket (upper bounds, `+Inf` implied), sum and count."""

    def __init__(self, bounds: Seq[float]):
        if list(bounds) != sorted(set(bounds)):
            raise ValueError(f"histogram bounds must increase strictly, got {list(bounds)}")
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """(le label, observations <= bound) per bucket, ending with +Inf."""
        out, total = [], 0
        for bound, n in zip((*map(_number, self.bounds), "+Inf"), self.counts):
            total += n
            out.append((bound, total))
        return out


class ServerMetrics:
    """Counters and histograms of one server, fed by the engine loop (a LoopObserver)."""

    COUNTERS = {
        "requests_finished_total": "Requests that finished (stop or length).",
        "requests_aborted_total": "Requests aborted (client disconnected or server shutdown).",
        "requests_rejected_total": "Requests the scheduler could never serve.",
        "invalid_requests_total": "HTTP requests refused as invalid (status 4xx).",
        "prompt_tokens_total": "Prompt tokens of the requests that arrived.",
        "generation_tokens_total": "Tokens generated.",
        "engine_steps_total": "Engine steps run.",
    }

    def __init__(self, model_name: str, state: Callable[[], object]):
        self.labels = f'model_name="{_escape(model_name)}"'
        self._state = state  # () -> EngineState
        self._lock = threading.Lock()
        self.counters = dict.fromkeys(self.COUNTERS, 0)
        self.ttft = Histogram(TTFT_BUCKETS)
        self.tpot = Histogram(TPOT_BUCKETS)

    # ---- LoopObserver ----
    def arrived(self, request: Request) -> None:
        self._add("prompt_tokens_total", request.prompt_len)

    def stepped(self, out: StepOutput, engine: Engine) -> None:
        with self._lock:
            self.counters["engine_steps_total"] += 1
            self.counters["generation_tokens_total"] += len(out.new_tokens)
            for seq, _ in out.new_tokens:
                if seq.num_output_tokens == 1 and seq.first_token_s is not None:
                    self.ttft.observe(seq.first_token_s - seq.request.arrival_s)

    def ended(self, seq: Sequence) -> None:
        status = seq.status.value
        if status == "finished":
            tpot = request_latencies(seq.request.arrival_s, seq.first_scheduled_s,
                                     seq.first_token_s, seq.finish_s, seq.num_output_tokens)["tpot"]
            with self._lock:
                if not math.isnan(tpot):
                    self.tpot.observe(tpot)
        key = {"finished": "requests_finished_total", "rejected": "requests_rejected_total"}
        self._add(key.get(status, "requests_aborted_total"), 1)

    # ---- HTTP handlers ----
    def invalid_request(self) -> None:
        self._add("invalid_requests_total", 1)

    def render(self) -> str:
        s = self._state()
        total = s.kv_blocks_used + s.kv_blocks_free
        gauges = {
            "num_requests_waiting": ("Requests waiting to be scheduled.", s.waiting),
            "num_requests_running": ("Requests holding device KV blocks.", s.running),
            "num_requests_swapped": ("Requests whose KV blocks sit in the host pool.", s.swapped),
            "kv_blocks_used": ("Device KV blocks in use.", s.kv_blocks_used),
            "kv_blocks_free": ("Device KV blocks free (cached but unused ones included).",
                               s.kv_blocks_free),
            "kv_usage_fraction": ("Fraction of device KV blocks in use.",
                                  s.kv_blocks_used / total if total else 0.0),
        }
        lines: list[str] = []
        for name, (help_text, value) in gauges.items():
            self._family(lines, name, "gauge", help_text)
            lines.append(f"{PREFIX}{name}{{{self.labels}}} {_number(value)}")
        with self._lock:
            for name, help_text in self.COUNTERS.items():
                self._family(lines, name, "counter", help_text)
                lines.append(f"{PREFIX}{name}{{{self.labels}}} {self.counters[name]}")
            self._histogram(lines, "time_to_first_token_seconds", self.ttft,
                            "Time from arrival to the first output token.")
            self._histogram(lines, "time_per_output_token_seconds", self.tpot,
                            "Per finished request: (e2e - ttft) / (output tokens - 1).")
        return "\n".join(lines) + "\n"

    def _add(self, counter: str, n: int) -> None:
        with self._lock:
            self.counters[counter] += n

    def _histogram(self, lines: list[str], name: str, hist: Histogram, help_text: str) -> None:
        self._family(lines, name, "histogram", help_text)
        for le, n in hist.cumulative():
            lines.append(f'{PREFIX}{name}_bucket{{{self.labels},le="{le}"}} {n}')
        lines.append(f"{PREFIX}{name}_sum{{{self.labels}}} {_number(hist.sum)}")
        lines.append(f"{PREFIX}{name}_count{{{self.labels}}} {hist.count}")

    @staticmethod
    def _family(lines: list[str], name: str, kind: str, help_text: str) -> None:
        lines.append(f"# HELP {PREFIX}{name} {help_text}")
        lines.append(f"# TYPE {PREFIX}{name} {kind}")


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def _escape(label_value: str) -> str:
    return label_value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
