"""A cluster of replicas on one virtual timeline, and the loop that replays a trace on it.

The loop is an event loop over three kinds of events, always taking the earliest:
    a request arrives        -> the router picks a replica, which queues it
    a KV handoff lands       -> (disaggregated) the request joins its decode replica
    a replica's step starts  -> that replica steps (its clock reads when its last step ended)
Ties go to arrivals, then handoffs, then the lowest replica index, so a run is deterministic.
A simulated replica whose next steps are plain decodes takes them at once (the engine's
fast-forward), up to its horizon: the next event that could change its work.
A step is atomic: a replica's state is what it is after its latest step, even while other
replicas' earlier steps are still being taken; a request routed to a busy replica joins at
its next step, as it would in one engine.
"""
from __future__ import annotations

import dataclasses
import heapq
import math
import time
from collections import deque
from dataclasses import dataclass
from itertools import count

from testbed.cluster.handoff import KVLink, decode_request, merged_sequence, prefill_request
from testbed.cluster.replica import Replica
from testbed.cluster.routers import Router
from testbed.metrics import SLO
from testbed.replay.driver import Progress, ReplayCounts, StalledError, step_columns, step_row
from testbed.replay.recorder import Recorder
from testbed.request import Request, Sequence, SeqStatus


@dataclass(slots=True)
class Ended:
    """A request's final record and where it ran."""

    seq: Sequence  # with the original request
    replica: int  # the replica that ended it
    prefill_replica: int  # the replica that computed its prompt (the same when colocated)
    kv_transfer_s: float = 0.0  # handoff: prefill end to arrival at the decode replica


@dataclass(slots=True)
class Handoff:
    original: Request
    prefill: Sequence
    source: int
    target: Replica
    request: Request  # the decode replica's part
    sent_s: float
    landed_s: float


@dataclass(slots=True)
class Disaggregation:
    """Decode replicas, their router, the link and the KV bytes one prompt token moves."""

    decode: list[Replica]
    router: Router
    link: KVLink
    kv_bytes_per_token: float


class Cluster:
    """Front replicas (colocated, or prefill when disaggregated) behind `router`."""

    def __init__(self, replicas: list[Replica], router: Router,
                 disaggregation: Disaggregation | None = None):
        self.front = replicas
        self.router = router
        self.disagg = disaggregation
        self.replicas = replicas + (disaggregation.decode if disaggregation else [])
        if [r.index for r in self.replicas] != list(range(len(self.replicas))):
            raise ValueError("replica indices must be 0, 1, ... in order (front, then decode)")
        roles = {r.role for r in replicas}
        if roles != ({"prefill"} if disaggregation else {"colocated"}):
            raise ValueError(f"front replicas must all be {'prefill' if disaggregation else 'colocated'}, "
                             f"got roles {sorted(roles)}")
        if disaggregation and {r.role for r in disaggregation.decode} != {"decode"}:
            raise ValueError("disaggregated decode replicas must have role 'decode'")
        self._handoffs: list[tuple[float, int, Handoff]] = []
        self._order = count()
        self._prefilled: dict[str, Handoff] = {}  # request id -> its handoff, until it ends
        self.now = 0.0  # the latest event time, for progress lines

    # -- events ---------------------------------------------------------------------------

    def next_step(self) -> Replica | None:
        """The replica whose next step starts first (None: none has work)."""
        best = None
        for r in self.replicas:
            if r.has_work and (best is None or r.now < best.now):
                best = r
        return best

    def next_handoff_s(self) -> float:
        return self._handoffs[0][0] if self._handoffs else math.inf

    def horizon(self, replica: Replica, next_arrival_s: float) -> float:
        """Until when nothing else can change `replica`'s work (so its steps may be taken
        ahead): a front replica until the next arrival; a decode replica also until the next
        handoff lands, or a front replica's next step starts (which may hand one over)."""
        if replica.role != "decode":
            return next_arrival_s
        busy_front = (r.now for r in self.front if r.has_work)
        return min(next_arrival_s, self.next_handoff_s(), *busy_front)

    def arrive(self, request: Request) -> None:
        """Route a request arriving now to a front replica."""
        self.now = max(self.now, request.arrival_s)
        replica = self.router.route(request, self.front)
        replica.admit(prefill_request(request) if self.disagg else request, request.arrival_s)

    def land_handoff(self) -> None:
        """The earliest KV transfer has arrived: its request joins its decode replica."""
        landed_s, _, h = heapq.heappop(self._handoffs)
        self.now = max(self.now, landed_s)
        h.target.incoming_tokens -= h.request.prompt_len + h.request.output_len
        seq = h.target.admit(h.request, landed_s)
        h.target.engine.executor.receive(seq, h.original)
        self._prefilled[h.original.request_id] = h

    def ended(self, replica: Replica, seq: Sequence, original: Request) -> Ended | None:
        """`seq` ended on `replica`: the request's record, or None if it moved on to a
        decode replica. `original` is the request as the trace gave it."""
        if replica.role == "colocated":
            return Ended(seq, replica.index, replica.index)
        if replica.role == "decode":
            h = self._prefilled.pop(original.request_id)
            return Ended(merged_sequence(original, h.prefill, seq, h.landed_s), replica.index,
                         h.source, h.landed_s - h.sent_s)
        if seq.status is not SeqStatus.FINISHED or original.output_len == 1:
            return Ended(dataclasses.replace(seq, request=original), replica.index, replica.index)
        self._send(replica, seq, original)
        return None

    def _send(self, source: Replica, seq: Sequence, original: Request) -> None:
        d = self.disagg
        request = decode_request(original, seq.output_token_ids[0])
        target = d.router.route(request, d.decode)
        target.incoming_tokens += request.prompt_len + request.output_len
        nbytes = original.prompt_len * d.kv_bytes_per_token
        landed = d.link.send(source.index, seq.finish_s, nbytes)
        h = Handoff(original, seq, source.index, target, request, seq.finish_s, landed)
        heapq.heappush(self._handoffs, (landed, next(self._order), h))


def run_cluster(requests: list[Request], cluster: Cluster, recorder: Recorder | None = None, *,
                slo: SLO | None = None, progress: bool = False, max_steps: int | None = None
                ) -> ReplayCounts:
    """Replay `requests` on `cluster` until every one has ended; log steps and requests
    (with their replicas) into `recorder`."""
    originals = {r.request_id: r for r in requests}
    if len(originals) != len(requests):
        raise ValueError("request ids must be unique")
    arrivals = deque(sorted(requests, key=lambda r: r.arrival_s))
    counts = ReplayCounts(requests=len(requests))
    bar = Progress(counts, cluster) if progress else None
    t0 = time.perf_counter()
    while True:
        replica = cluster.next_step()
        t_step = replica.now if replica is not None else math.inf
        t_arrival = arrivals[0].arrival_s if arrivals else math.inf
        t_handoff = cluster.next_handoff_s()
        if t_arrival <= t_step and t_arrival <= t_handoff:
            if not arrivals:
                break  # nothing left anywhere
            cluster.arrive(arrivals.popleft())
            continue
        if t_handoff <= t_step:
            cluster.land_handoff()
            continue
        left = None if max_steps is None else max_steps - counts.steps
        run = replica.fast_forward(cluster.horizon(replica, t_arrival), left)
        if run is not None:  # many decode steps at once, up to the next event that can touch it
            counts.steps += run.num_steps
            cluster.now = max(cluster.now, float(run.t_end[-1]))
            if recorder is not None:
                recorder.step_batch({**step_columns(run), "replica": replica.index}, run.num_steps)
            finished = run.finished
        else:
            out = replica.step()
            counts.steps += 1
            cluster.now = max(cluster.now, out.t_end)
            if recorder is not None:
                recorder.step({**step_row(out), "replica": replica.index})
            finished = out.finished
            if out.plan.is_empty and not out.finished:
                replica.stalled = True  # until a request arrives here
        for seq in finished:
            ended = cluster.ended(replica, seq, originals[seq.request.request_id])
            if ended is not None:
                _log(ended, counts, recorder, slo)
        if bar is not None:
            bar.update()
        if max_steps is not None and counts.steps >= max_steps:
            raise StalledError(f"stopped after max_steps={max_steps}")
    stuck = [r.index for r in cluster.replicas if r.engine.has_unfinished]
    if stuck:
        raise StalledError(f"replicas {stuck} can make no progress and nothing else will arrive")
    counts.wall_seconds = time.perf_counter() - t0
    counts.sim_seconds = cluster.now
    if bar is not None:
        bar.update(final=True)
    return counts


def _log(ended: Ended, counts: ReplayCounts, recorder: Recorder | None, slo: SLO | None) -> None:
    seq = ended.seq
    counts.count_ended(seq)
    if recorder is None:
        return
    recorder.ended(seq, slo, replica=ended.replica, prefill_replica=ended.prefill_replica,
                   kv_transfer_s=ended.kv_transfer_s)
    if recorder.tokens is not None:
        recorder.request_tokens(seq.request.request_id, seq.token_times)
