"""Request and sequence state shared by every part of the serving loop.

A `Request` is what a trace (or a client) asks for: immutable. A `Sequence` is the
scheduler's live view of one request: how many tokens are computed, which KV blocks it
holds, what it generated. Schedulers, KV managers and executors all read the same object,
so the real engine and the simulator run the very same bookkeeping.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field


@dataclass(slots=True)
class SamplingParams:
    """How to pick tokens. `temperature == 0` is greedy."""

    temperature: float = 0.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()  # usually the model's EOS ids
    ignore_eos: bool = False  # trace replay: the output length comes from the trace


@dataclass(slots=True)
class Request:
    """One request of a workload, as the trace gives it.

    `output_len` is the maximum number of tokens to generate (exact when `ignore_eos`).
    `block_hashes` identify prompt blocks of `hash_block_size` tokens (Mooncake style):
    equal hashes mean equal token blocks, which is what prefix caching exploits.
    """

    request_id: str
    arrival_s: float
    prompt_len: int
    output_len: int
    prompt_token_ids: list[int] | None = None
    prompt_text: str | None = None
    block_hashes: list[int] | None = None
    hash_block_size: int = 0
    priority: int = 0  # lower value = more important
    session_id: str | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)


PENDING_TOKEN = -1  # an output token sampled on the device but not read back yet


class SeqStatus(enum.Enum):
    WAITING = "waiting"  # queued, holds no KV blocks (new or preempted by recompute)
    RUNNING = "running"  # holds device KV blocks
    SWAPPED = "swapped"  # its KV blocks sit in the host pool
    FINISHED = "finished"
    REJECTED = "rejected"  # can never be served (too long, does not fit); has a reason
    ABORTED = "aborted"  # cancelled by the caller (client went away)

    @property
    def is_done(self) -> bool:
        return self in (SeqStatus.FINISHED, SeqStatus.REJECTED, SeqStatus.ABORTED)


@dataclass(slots=True, eq=False)
class Sequence:
    """The scheduler's live state of one request.

    The tokens of a sequence are its prompt followed by what it generated so far;
    `num_computed_tokens` of them have KV entries. A step schedules `n` new tokens:
    positions `[num_computed_tokens, num_computed_tokens + n)`. When that reaches
    `num_tokens`, the step samples one token for it (end of prefill, or a decode).
    """

    seq_id: int
    request: Request
    status: SeqStatus = SeqStatus.WAITING
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache (first admission)
    block_table: list[int] = field(default_factory=list)  # device KV block ids, in order
    num_preemptions: int = 0
    reason: str = ""  # why it finished / was rejected ("length", "stop", "too long: ...")
    # Times on the run's clock (seconds); filled by the scheduler's update.
    first_scheduled_s: float | None = None
    first_token_s: float | None = None
    finish_s: float | None = None
    token_times: list[float] = field(default_factory=list)
    # Free slots for policies (e.g. MLFQ level, predicted length); never read by others.
    policy_state: dict = field(default_factory=dict)

    @property
    def prompt_len(self) -> int:
        return self.request.prompt_len

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        """Prompt plus generated tokens: what must be in the KV cache to decode the next one."""
        return self.request.prompt_len + len(self.output_token_ids)

    @property
    def max_tokens(self) -> int:
        """The most tokens this sequence can ever hold (prompt + maximum output)."""
        return self.request.prompt_len + self.request.output_len

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_prefilling(self) -> bool:
        """True while more than one token is uncomputed (a prompt, or a recompute after preemption)."""
        return self.num_uncomputed_tokens > 1

    def token_id(self, index: int) -> int:
        """Token at position `index` of prompt + output (needs prompt token ids)."""
        p = self.request.prompt_len
        if index < p:
            return self.request.prompt_token_ids[index]  # type: ignore[index]
        return self.output_token_ids[index - p]
