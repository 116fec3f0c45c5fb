"""One replica of a cluster: an engine (its own scheduler, KV manager, executor and clock)
and the requests it holds."""
from __future__ import annotations

from dataclasses import dataclass, field

from testbed.engine.engine import Engine, StepOutput, StepRun
from testbed.request import Request, Sequence

ROLES = ("colocated", "prefill", "decode")


@dataclass(slots=True, eq=False)
class Replica:
    """`role`: `colocated` serves requests start to end; in a disaggregated cluster a
    `prefill` replica computes prompts and first tokens, a `decode` replica the rest.

    Its clock reads the end of its last step, which is when its next step can start; the
    cluster keeps every replica's clock on one timeline."""

    index: int
    role: str
    engine: Engine
    live: dict[str, Sequence] = field(default_factory=dict)  # its unfinished requests, by id
    incoming_tokens: int = 0  # KV of requests on their way here (a decode replica)
    routed: int = 0  # requests routed here
    stalled: bool = False  # planned nothing last step; waits for a request to arrive here

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"replica {self.index}: role must be one of {', '.join(ROLES)}, "
                             f"got {self.role!r}")

    @property
    def now(self) -> float:
        return self.engine.clock.now

    @property
    def kv(self):
        return self.engine.scheduler.kv

    @property
    def has_work(self) -> bool:
        return self.engine.has_unfinished and not self.stalled

    def outstanding_tokens(self) -> int:
        """Tokens this replica still has to compute (at most) for the requests it holds:
        each one's prompt plus output length, less what is computed; plus incoming KV."""
        return self.incoming_tokens + sum(s.request.prompt_len + s.request.output_len
                                          - s.num_computed_tokens for s in self.live.values())

    def admit(self, request: Request, now: float) -> Sequence:
        """Add `request` at time `now` (an idle replica's clock jumps to it)."""
        self.engine.clock.wait_until(now)
        seq = self.engine.add_request(request)
        self.live[request.request_id] = seq
        self.routed += 1
        self.stalled = False
        return seq

    def step(self) -> StepOutput:
        out = self.engine.step()
        self._forget(out.finished)
        return out

    def fast_forward(self, until: float, max_steps: int | None = None) -> StepRun | None:
        """A run of plain decode steps starting before `until`, taken at once (the engine's
        fast-forward); None when the next step is anything else."""
        run = self.engine.fast_forward_steps(until, max_steps)
        if run is not None:
            self._forget(run.finished)
        return run

    def _forget(self, finished: list[Sequence]) -> None:
        for seq in finished:
            self.live.pop(seq.request.request_id, None)
