"""Scheduler settings shared by every policy, plus the options of individual policies."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

PREEMPTION_MODES = ("recompute", "swap")


@dataclass(slots=True)
class SchedulerConfig:
    max_num_seqs: int = 64  # most sequences in one step (and running at once, except mlfq)
    max_num_batched_tokens: int = 2048  # token budget of one step
    max_model_len: int = 32768  # longest prompt + output accepted
    enable_chunked_prefill: bool = True  # split prompts across steps (sarathi always does)
    preemption: str = "recompute"  # recompute | swap (falls back to recompute when the host pool is full)
    # sjf: which output-length predictor orders the queue (oracle | learned)
    predictor: str = "oracle"
    predictor_default_len: int = 256  # learned predictor's guess before anything finished
    # mlfq (FastServe): level i has a quantum of mlfq_base_quantum * 2**i iterations; a new
    # request skips to the first level whose prompt threshold mlfq_join_tokens * 2**i holds it.
    mlfq_levels: int = 4
    mlfq_base_quantum: int = 16
    mlfq_join_tokens: int = 512
    mlfq_starvation_s: float = 30.0  # a sequence not scheduled for this long goes back to level 0
    # lpm: above this many waiting requests the queue stays FCFS (sorting it costs a lookup each)
    lpm_max_sorted: int = 128

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens", "max_model_len",
                     "predictor_default_len", "mlfq_levels", "mlfq_base_quantum",
                     "mlfq_join_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"scheduler config: {name} must be >= 1, got {getattr(self, name)}")
        if self.mlfq_starvation_s <= 0:
            raise ValueError(f"scheduler config: mlfq_starvation_s must be > 0, got {self.mlfq_starvation_s}")
        if self.lpm_max_sorted < 0:
            raise ValueError(f"scheduler config: lpm_max_sorted must be >= 0, got {self.lpm_max_sorted}")
        if self.preemption not in PREEMPTION_MODES:
            raise ValueError(f"scheduler config: preemption must be one of {', '.join(PREEMPTION_MODES)}, "
                             f"got {self.preemption!r}")

    @classmethod
    def from_dict(cls, d: Mapping) -> "SchedulerConfig":
        """Build from a mapping (a Hydra node); an unknown key is an error that names it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"scheduler config: unknown key(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        return cls(**d)
