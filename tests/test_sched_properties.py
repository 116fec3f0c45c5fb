"""Property tests: random workloads through every scheduler x KV manager pair (both preemption
modes), driven by the replay loop with a fake executor over a simulated physical KV pool.

Each step checks the budgets, that every scheduled sequence holds blocks for its tokens and
that its computed blocks hold the right content (hits, swaps and dedup included), that no block
is written while someone else holds it, that blocks are shared only by equal prefixes, that the
used-block count matches the live block tables, and that prefix hits equal a brute-force oracle
over the simulated pool. At the end: every request finished with exactly its output length or
was rejected for a reason a formula predicts, and nothing leaked.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fakes import FakeExecutor, block_identity, draw_prompt, shared_tokens, unique_tokens
from testbed.kv import CachingKVManager, make_kv_manager
from testbed.plan import StepResult
from testbed.request import Request, SamplingParams, Sequence, SeqStatus
from testbed.sched import SchedulerConfig, make_scheduler

SCHEDULERS = ["static", "orca", "vllm", "sarathi", "priority", "sjf", "mlfq", "lpm"]
KV_SETUPS = [("contiguous", "lru"), ("paged", "lru"), ("prefix", "lru"), ("prefix", "lfu"),
             ("prefix", "fifo"), ("radix", "lru"), ("radix", "lfu"), ("radix", "fifo")]
NEVER_PREEMPT = {"static", "orca"}
MAX_STEPS = 20_000
STOP = 7  # a stop token the fake executor never produces


@dataclass
class Workload:
    requests: list[Request]
    block_size: int
    num_blocks: int
    num_host_blocks: int
    config: SchedulerConfig
    shared_outputs: bool
    aborts: dict[int, int]  # step -> index of the request a client abandons then


@st.composite
def workloads(draw) -> Workload:
    B = draw(st.sampled_from([2, 4, 8]))
    mode = draw(st.sampled_from(["tokens", "hashes", "none", "mixed"]))
    h = draw(st.sampled_from(sorted({max(1, B // 2), B, 2 * B})))
    n = draw(st.integers(1, 12))
    arrivals = sorted(draw(st.lists(st.integers(0, 10), min_size=n, max_size=n)))
    requests = []
    for i, arrival in enumerate(arrivals):
        kind = mode if mode != "mixed" else draw(st.sampled_from(["tokens", "hashes", "none"]))
        prompt_len, tokens, hashes = draw_prompt(draw, i, kind, h, trim_hashes=True)
        if requests and draw(st.integers(0, 3)) == 0:  # the same prompt as an earlier request
            same = requests[draw(st.integers(0, len(requests) - 1))]
            prompt_len, tokens, hashes = same.prompt_len, same.prompt_token_ids, same.block_hashes
        requests.append(Request(
            request_id=f"r{i}", arrival_s=arrival / 10, prompt_len=prompt_len,
            output_len=draw(st.integers(1, 24)), prompt_token_ids=tokens, block_hashes=hashes,
            hash_block_size=h if hashes is not None else 0, priority=draw(st.integers(0, 2)),
            sampling=SamplingParams(stop_token_ids=(STOP,))))
    # Pools from a bit too small for the largest request to roomy: some rejections, much preemption.
    largest = max(-(-(r.prompt_len + r.output_len) // B) for r in requests)
    num_blocks = max(1, largest + draw(st.integers(-2, largest)))
    config = SchedulerConfig(
        max_num_seqs=draw(st.integers(1, 6)), max_num_batched_tokens=draw(st.integers(1, 64)),
        max_model_len=draw(st.integers(30, 70)), enable_chunked_prefill=draw(st.booleans()),
        predictor=draw(st.sampled_from(["oracle", "learned"])), predictor_default_len=4,
        mlfq_levels=3, mlfq_base_quantum=2, mlfq_join_tokens=8, mlfq_starvation_s=0.3,
        lpm_max_sorted=draw(st.sampled_from([0, 128])))
    aborts = draw(st.dictionaries(st.integers(0, 60), st.integers(0, n - 1), max_size=2))
    return Workload(requests, B, num_blocks, draw(st.integers(0, largest)), config,
                    draw(st.booleans()), aborts)


def expected_rejection(req: Request, w: Workload, chunked: bool) -> bool:
    total = req.prompt_len + req.output_len
    return (total > w.config.max_model_len
            or (not chunked and req.prompt_len > w.config.max_num_batched_tokens)
            or -(-total // w.block_size) > w.num_blocks)


class Harness:
    """Drives one workload and checks every step."""

    def __init__(self, name: str, kv_name: str, eviction: str, preemption: str, w: Workload):
        self.name, self.w = name, w
        self.B = w.block_size
        self.kv = make_kv_manager(kv_name, w.num_blocks, self.B, w.num_host_blocks, eviction)
        config = SchedulerConfig.from_dict(
            {f: getattr(w.config, f) for f in w.config.__slots__} | {"preemption": preemption})
        self.config = config
        self.sched = make_scheduler(name, config, self.kv)
        self.executor = FakeExecutor(self.B, shared_tokens if w.shared_outputs else unique_tokens)
        self.seqs = [Sequence(i, r) for i, r in enumerate(w.requests)]
        self.live: dict[int, Sequence] = {}
        self.ended: dict[int, Sequence] = {}
        self.preemptions = 0
        self.aborted: set[int] = set()

    def run(self) -> None:
        pending, now = deque(self.seqs), 0.0
        for step in range(MAX_STEPS):
            victim = self.seqs[self.w.aborts[step]] if step in self.w.aborts else None
            if victim is not None and victim.seq_id in self.live:
                assert self.sched.abort(victim.seq_id, now) is victim
                self.aborted.add(victim.seq_id)
                del self.live[victim.seq_id]  # to be reported by the next update
                self.check_blocks()
            while pending and pending[0].request.arrival_s <= now:
                seq = pending.popleft()
                self.live[seq.seq_id] = seq
                self.sched.add(seq, now)
            if not self.sched.has_unfinished:
                self.check_idle()
                if not pending:
                    break
                now = pending[0].request.arrival_s
                continue
            self.check_lookups()
            was_running = {s.seq_id for s in self.live.values() if s.status is SeqStatus.RUNNING}
            plan = self.sched.schedule(now)
            self.check_plan(plan, was_running)
            result = self.executor.run_model(plan) if not plan.is_empty else StepResult({}, 0.0)
            now += result.seconds
            for seq in self.sched.update(plan, result, now):
                assert seq.status.is_done and not seq.block_table and seq.seq_id not in self.ended
                self.ended[seq.seq_id] = seq
                self.live.pop(seq.seq_id, None)
            self.check_blocks()
        else:
            pytest.fail(f"no end after {MAX_STEPS} steps: {self.sched.num_waiting} waiting, "
                        f"{self.sched.num_running} running, {self.sched.num_swapped} swapped")
        self.check_end()

    # -- checks ---------------------------------------------------------------------------------

    def holders(self) -> dict[int, list[tuple[Sequence, int]]]:
        out: dict[int, list] = {}
        for seq in self.live.values():
            for i, block in enumerate(seq.block_table):
                out.setdefault(block, []).append((seq, i))
        return out

    def check_lookups(self) -> None:
        cached = self.kv.cached_blocks() if isinstance(self.kv, CachingKVManager) else set()
        resident = {self.executor.device.get(b) for b in cached}
        for seq in self.live.values():
            if seq.status is not SeqStatus.WAITING:
                continue
            oracle = 0
            while oracle < (seq.num_tokens - 1) // self.B and block_identity(seq, oracle, self.B) in resident:
                oracle += 1
            assert self.kv.lookup(seq) == oracle * self.B, f"lookup of {seq.request.request_id}"

    def check_plan(self, plan, was_running: set[int]) -> None:
        c, B = self.config, self.B
        assert len(plan.scheduled) <= c.max_num_seqs
        assert plan.num_batched_tokens <= c.max_num_batched_tokens
        assert len({s.seq.seq_id for s in plan.scheduled}) == len(plan.scheduled)
        self.preemptions += len(plan.preempted) + bool(plan.swap_out)
        if self.name in NEVER_PREEMPT:
            assert not plan.preempted and not plan.swap_out
        if self.name == "static" and was_running:
            assert all(s.seq.seq_id in was_running for s in plan.scheduled), "static admitted mid-batch"
        if self.name == "sarathi":
            kinds = [s.seq.seq_id in was_running and s.seq.num_tokens - s.seq.num_computed_tokens == 1
                     for s in plan.scheduled]
            assert kinds == sorted(kinds, reverse=True), "a prefill chunk went before a decode"
        assert not (plan.swap_in and plan.swap_out)
        held = self.holders()
        for item in plan.scheduled:
            seq, n = item.seq, item.num_new_tokens
            assert seq.status is SeqStatus.RUNNING and n >= 1
            assert seq.num_computed_tokens + n <= seq.num_tokens
            assert len(seq.block_table) * B >= seq.num_computed_tokens + n
        self.executor.copy_blocks(plan)  # swapped-in blocks arrive before the model runs
        for item in plan.scheduled:
            seq, start = item.seq, item.seq.num_computed_tokens
            for i in range(start // B):
                assert self.executor.device.get(seq.block_table[i]) == block_identity(seq, i, B), \
                    f"block {i} of {seq.request.request_id} holds wrong KV"
            if start % B:
                assert self.executor.device.get(seq.block_table[start // B]) == ("partial", seq.seq_id, start // B)
            for i in range(start // B, -(-(start + item.num_new_tokens) // B)):
                assert [s for s, _ in held[seq.block_table[i]]] == [seq], "write to a shared block"

    def check_blocks(self) -> None:
        held = self.holders()
        for block, users in held.items():
            if len(users) > 1:
                assert isinstance(self.kv, CachingKVManager), "blocks shared without a prefix cache"
                first, i = users[0]
                for seq, j in users:
                    assert j == i and (i + 1) * self.B <= seq.num_computed_tokens
                    assert block_identity(seq, i, self.B) == block_identity(first, i, self.B)
        assert self.kv.num_used_blocks == len(held)
        assert self.kv.num_free_blocks == self.kv.num_blocks - len(held)
        host_used = sum(-(-s.num_computed_tokens // self.B) for s in self.live.values()
                        if s.status is SeqStatus.SWAPPED)
        assert self.kv.num_free_host_blocks == self.kv.num_host_blocks - host_used
        assert self.sched.num_running + self.sched.num_waiting + self.sched.num_swapped == len(self.live)

    def check_idle(self) -> None:
        assert not self.live
        assert self.kv.num_used_blocks == 0 and self.kv.num_free_blocks == self.kv.num_blocks
        assert self.kv.num_free_host_blocks == self.kv.num_host_blocks

    def check_end(self) -> None:
        assert len(self.ended) == len(self.seqs) and not self.live
        chunked = self.sched.chunked
        for seq in self.seqs:
            req = seq.request
            if seq.seq_id in self.aborted:
                assert seq.status is SeqStatus.ABORTED and seq.reason == "aborted"
                continue
            rejected = expected_rejection(req, self.w, chunked)
            if rejected:
                assert seq.status is SeqStatus.REJECTED and seq.reason
                continue
            assert seq.status is SeqStatus.FINISHED and seq.reason == "length"
            assert seq.num_output_tokens == req.output_len == len(seq.token_times)
            assert req.arrival_s <= seq.first_scheduled_s <= seq.first_token_s <= seq.finish_s
        self.check_idle()


@pytest.mark.parametrize("preemption", ["recompute", "swap"])
@pytest.mark.parametrize("kv_name,eviction", KV_SETUPS)
@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_request_ends_and_bookkeeping_holds(name, kv_name, eviction, preemption):
    @settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(workloads())
    def run(w: Workload):
        Harness(name, kv_name, eviction, preemption, w).run()

    run()
