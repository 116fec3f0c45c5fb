"""Micro-benchmark of the scheduling bookkeeping (reported, not asserted): ~200k decode-heavy
steps at batch 32 through vllm + prefix with a do-nothing executor, as a long simulation runs
them. Run with `pytest tests/test_sched_speed.py -m slow -s`."""
from __future__ import annotations

import time

import pytest

from testbed.kv import make_kv_manager
from testbed.plan import StepResult
from testbed.request import Request, SamplingParams, Sequence
from testbed.sched import SchedulerConfig, make_scheduler


def bench(scheduler: str = "vllm", kv_name: str = "prefix", steps: int = 200_000, batch: int = 32,
          prompt_len: int = 512, output_len: int = 500) -> dict:
    """Requests with Mooncake-style hashes (one of 50 shared first blocks of 512 tokens),
    enough of them that `batch` sequences run at every step."""
    kv = make_kv_manager(kv_name, num_blocks=8192, block_size=16)
    sched = make_scheduler(scheduler, SchedulerConfig(max_num_seqs=batch), kv)
    sampling = SamplingParams(ignore_eos=True)
    for i in range(steps * batch // output_len + 2 * batch):
        hashes = [i % 50] + [10_000 + 100 * i + q for q in range(prompt_len // 512)]
        request = Request(f"r{i}", 0.0, prompt_len, output_len, block_hashes=hashes,
                          hash_block_size=512, sampling=sampling)
        sched.add(Sequence(i, request), 0.0)
    now, scheduled, tokens_out = 0.0, 0, 0
    start = time.process_time()
    for _ in range(steps):
        plan = sched.schedule(now)
        tokens = {s.seq.seq_id: 0 for s in plan.scheduled if s.samples}
        now += 0.01
        sched.update(plan, StepResult(tokens, 0.01), now)
        scheduled += len(plan.scheduled)
        tokens_out += len(tokens)
    seconds = time.process_time() - start
    return {"steps": steps, "seqs_per_step": scheduled / steps, "us_per_step": seconds / steps * 1e6,
            "us_per_seq": seconds / scheduled * 1e6, "seconds": seconds, "tokens": tokens_out,
            "hit_rate": kv.stats.hit_rate}


@pytest.mark.slow
def test_report_scheduling_speed():
    r = bench()
    print(f"\nvllm + prefix: {r['steps']} steps at {r['seqs_per_step']:.1f} seqs/step in {r['seconds']:.1f} s "
          f"CPU: {r['us_per_step']:.0f} us/step, {r['us_per_seq']:.2f} us per scheduled sequence "
          f"(prefix hit rate {r['hit_rate']:.2f})")
    assert r["tokens"] > 0
