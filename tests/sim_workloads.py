"""Simulated replays of small workloads for the tests that compare two ways of running the
same thing (fast-forward on and off, deferred and immediate indexing): random workloads with
prefix sharing, eviction, preemption, swapping and stop tokens, and a busy fixed one, replayed
on the tiny model's simulator with the step, request and token logs kept in memory."""
from __future__ import annotations

import random
from dataclasses import dataclass

import pandas as pd
from hypothesis import strategies as st

from fakes import draw_prompt

from testbed.engine.engine import Engine
from testbed.kv import make_kv_manager
from testbed.model.config import named_config
from testbed.replay.clock import VirtualClock
from testbed.replay.driver import replay
from testbed.replay.recorder import request_row
from testbed.request import Request, SamplingParams
from testbed.sched import SchedulerConfig, make_scheduler
from testbed.sim.executor import SimExecutor
from testbed.sim.hardware import load_profile
from testbed.sim.roofline import RooflineCostModel, swap_seconds_per_block

SCHEDULERS = ["static", "orca", "vllm", "sarathi", "priority", "sjf", "mlfq", "lpm"]
MODEL, HARDWARE = named_config("qwen2-tiny"), load_profile("cpu")
STEP_S = HARDWARE.step_overhead_s  # about one step of the tiny model
TOKEN = 0  # what the simulated executor samples
MAX_STEPS = 20_000


@dataclass
class Workload:
    requests: list[Request]
    block_size: int
    num_blocks: int
    num_host_blocks: int
    config: dict  # SchedulerConfig fields but `preemption`

    def __repr__(self) -> str:  # one line per request, for hypothesis's failure reports
        rows = [f"  {r.request_id} t={r.arrival_s:g} p={r.prompt_len} o={r.output_len} "
                f"tokens={r.prompt_token_ids} hashes={r.block_hashes} prio={r.priority} "
                f"stops={r.sampling.stop_token_ids} ignore_eos={r.sampling.ignore_eos}"
                for r in self.requests]
        return (f"Workload(B={self.block_size}, blocks={self.num_blocks}, "
                f"host={self.num_host_blocks}, {self.config}\n" + "\n".join(rows) + ")")


class Tables:
    """What the replay hands its recorder, kept in memory (the driver's rows and columns)."""

    def __init__(self):
        self.steps: list[dict] = []
        self.requests: list[dict] = []
        self.tokens: list[dict] = []
        self.steps_in_runs = 0
        self.ended_in_runs = 0
        self._in_run = False

    def step(self, row: dict) -> None:
        self.steps.append(row)
        self._in_run = False

    def step_batch(self, columns: dict, num_rows: int) -> None:
        for j in range(num_rows):
            self.steps.append({k: v[j] if isinstance(v, list) else v for k, v in columns.items()})
        self.steps_in_runs += num_rows
        self._in_run = True

    def ended(self, seq, slo=None) -> None:
        self.requests.append(request_row(seq, slo))
        self.ended_in_runs += self._in_run

    def request_tokens(self, request_id: str, times: list[float]) -> None:
        self.tokens += [{"request_id": request_id, "index": i, "t": t} for i, t in enumerate(times)]


def make_kv(w: Workload, kv_name: str, eviction: str):
    return make_kv_manager(kv_name, w.num_blocks, w.block_size, w.num_host_blocks, eviction,
                           "exact", w.config["max_model_len"])


def simulate(w: Workload, scheduler: str, kv, preemption: str, fast_forward: bool) -> Tables:
    """Replay `w` through `scheduler` over the KV manager `kv` on the simulated tiny model."""
    sched = make_scheduler(scheduler, SchedulerConfig(**w.config, preemption=preemption), kv)
    executor = SimExecutor(RooflineCostModel(MODEL, HARDWARE, "float32"),
                           swap_seconds_per_block(MODEL, HARDWARE, w.block_size, "float32"), TOKEN)
    engine = Engine(sched, executor, VirtualClock(), fast_forward=fast_forward)
    tables = Tables()
    replay(w.requests, engine, tables, max_steps=MAX_STEPS)
    return tables


def assert_same_tables(a: list[dict], b: list[dict]) -> None:
    pd.testing.assert_frame_equal(pd.DataFrame(a), pd.DataFrame(b), check_dtype=False,
                                  check_exact=False, rtol=1e-9)


@st.composite
def workloads(draw) -> Workload:
    B = draw(st.sampled_from([2, 4, 8]))
    mode = draw(st.sampled_from(["tokens", "hashes", "none", "mixed"]))
    n = draw(st.integers(1, 14))
    arrivals = sorted(draw(st.lists(st.integers(0, 80), min_size=n, max_size=n)))
    requests = []
    for i, arrival in enumerate(arrivals):
        kind = mode if mode != "mixed" else draw(st.sampled_from(["tokens", "hashes", "none"]))
        prompt_len, tokens, hashes = draw_prompt(draw, i, kind, B)
        if requests and draw(st.integers(0, 3)) == 0:  # the same prompt as an earlier request
            same = requests[draw(st.integers(0, len(requests) - 1))]
            prompt_len, tokens, hashes = same.prompt_len, same.prompt_token_ids, same.block_hashes
        stops = draw(st.sampled_from([(), (7,), (TOKEN,)]))  # TOKEN: ends at its first token
        requests.append(Request(
            f"r{i}", arrival * STEP_S / 2, prompt_len, draw(st.integers(1, 48)),
            prompt_token_ids=tokens, block_hashes=hashes,
            hash_block_size=B if hashes is not None else 0, priority=draw(st.integers(0, 2)),
            sampling=SamplingParams(stop_token_ids=stops, ignore_eos=draw(st.booleans()))))
    largest = max(-(-(r.prompt_len + r.output_len) // B) for r in requests)
    config = dict(
        max_num_seqs=draw(st.integers(1, 8)), max_num_batched_tokens=draw(st.integers(1, 64)),
        max_model_len=draw(st.integers(40, 100)), enable_chunked_prefill=draw(st.booleans()),
        predictor=draw(st.sampled_from(["oracle", "learned"])), predictor_default_len=4,
        mlfq_levels=3, mlfq_base_quantum=draw(st.integers(1, 6)), mlfq_join_tokens=8,
        mlfq_starvation_s=draw(st.sampled_from([30 * STEP_S, 30.0])),
        lpm_max_sorted=draw(st.sampled_from([0, 128])))
    return Workload(requests, B, max(1, largest + draw(st.integers(-2, 2 * largest))),
                    draw(st.integers(0, largest)), config)


def busy_workload(seed: int = 3) -> Workload:
    """Bursts of requests with long outputs and a few shared prefixes, on a pool that fills up."""
    rng, B = random.Random(seed), 4
    requests, t = [], 0.0
    for i in range(40):
        t += rng.choice([0.0, 0.0, 1.0, 30.0]) * STEP_S
        prompt_len = rng.randint(4, 40)
        hashes = [rng.randint(0, 2)] + [1000 * i + q for q in range(-(-prompt_len // B) - 1)]
        requests.append(Request(f"r{i}", t, prompt_len, rng.randint(1, 60), block_hashes=hashes,
                                hash_block_size=B, priority=rng.randint(0, 1),
                                sampling=SamplingParams(ignore_eos=True)))
    config = dict(max_num_seqs=6, max_num_batched_tokens=48, max_model_len=128,
                  mlfq_base_quantum=4, mlfq_join_tokens=16)
    return Workload(requests, B, num_blocks=60, num_host_blocks=20, config=config)
