"""The Sarathi chunking and SJF/MLFQ presets end to end at a tiny scale (a few requests, a
few policies, one or two load points), and the driver's refusal of a name without a
comparison."""
from __future__ import annotations

import pytest

from preset_runs import reproduce, top


def test_sarathi_chunking(tmp_path):
    md, runs = reproduce(tmp_path, "sarathi_chunking", "policy=vllm_nochunk,sarathi_512",
                         "trace.transforms.head=30", "trace.transforms.rate_scale=0.5,4")
    assert len(runs) == 4 and "capacity, strict (0.1 s)" in md and "| sarathi_512 |" in md
    at_top = top(runs)  # whole prompts stall the decodes batched with them; chunks bound the stall
    assert at_top.loc["sarathi_512", "itl_p99_s"] < at_top.loc["vllm_nochunk", "itl_p99_s"]


def test_sjf_vs_fcfs(tmp_path):
    md, runs = reproduce(tmp_path, "sjf_vs_fcfs", "policy=fcfs,sjf_oracle,mlfq",
                         "trace.transforms.head=40", "trace.transforms.rate_scale=3")
    assert len(runs) == 3 and "| sjf_oracle |" in md and "| mlfq |" in md
    assert (runs["n_finished"] == 40).all()


def test_unknown_preset_is_refused():
    from experiments.reproduce import reproduce as run_preset

    with pytest.raises(ValueError, match="no preset with a comparison; choose one of: orca_iteration"):
        run_preset("default")
