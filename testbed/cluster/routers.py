"""Routers: which replica serves a new request.

- `round_robin`: the replicas in turn.
- `least_loaded`: the replica with the fewest outstanding tokens (tokens it still has to
  compute for the requests it holds, plus KV on its way to it; see `Replica.outstanding_tokens`).
- `prefix_affinity`: the replica whose KV manager would serve the longest prefix of the
  prompt from its cache right now (ties and no hit anywhere: the least loaded of them). With
  `max_load_gap` it gives up affinity for a replica that many outstanding tokens busier
  than the least loaded one, so one hot prefix cannot pile everything onto one replica.
  Only computed blocks count: a prompt still waiting to be prefilled on a replica is not
  seen there yet.
Routing is deterministic: equal loads go to the replica that was given fewer requests so
far, then to the lowest index.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from testbed.cluster.replica import Replica
from testbed.registry import Registry
from testbed.request import Request, Sequence


class Router(Protocol):
    def route(self, request: Request, replicas: list[Replica]) -> Replica: ...


ROUTERS: Registry[Router] = Registry("router")


@ROUTERS.register("round_robin")
class RoundRobinRouter:
    def __init__(self):
        self._turn = 0

    def route(self, request: Request, replicas: list[Replica]) -> Replica:
        replica = replicas[self._turn % len(replicas)]
        self._turn += 1
        return replica


@ROUTERS.register("least_loaded")
class LeastLoadedRouter:
    def route(self, request: Request, replicas: list[Replica]) -> Replica:
        return least_loaded(replicas)


@ROUTERS.register("prefix_affinity")
class PrefixAffinityRouter:
    def __init__(self, max_load_gap: int | None = None):
        if max_load_gap is not None and max_load_gap < 0:
            raise ValueError(f"prefix_affinity router: max_load_gap must be >= 0, got {max_load_gap}")
        self.max_load_gap = max_load_gap

    def route(self, request: Request, replicas: list[Replica]) -> Replica:
        probe = Sequence(-1, request)  # block keys are computed once, shared by the lookups
        hits = [replica.kv.lookup(probe) for replica in replicas]
        best = max(hits)
        if best == 0:
            return least_loaded(replicas)
        chosen = least_loaded([r for r, hit in zip(replicas, hits) if hit == best])
        if self.max_load_gap is not None:
            lightest = least_loaded(replicas)
            if chosen.outstanding_tokens() - lightest.outstanding_tokens() > self.max_load_gap:
                return lightest
        return chosen


def least_loaded(replicas: list[Replica]) -> Replica:
    """Fewest outstanding tokens; among equals, fewest requests routed so far (idle
    replicas take turns), then the lowest index."""
    return min(replicas, key=lambda r: (r.outstanding_tokens(), r.routed, r.index))


def make_router(cfg: Mapping | str) -> Router:
    """A router from its name, or a mapping of `name` and the router's options."""
    cfg = {"name": cfg} if isinstance(cfg, str) else dict(cfg)
    name = cfg.pop("name", None)
    if name is None:
        raise ValueError(f"router config needs a name; got {cfg}")
    try:
        return ROUTERS.get(name)(**cfg)
    except TypeError as e:
        raise ValueError(f"router {name!r}: bad options {cfg}: {e}") from None
