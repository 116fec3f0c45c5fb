"""Build a cluster from a config shaped like the replay's plus a `cluster` node:

    cluster: {mode: colocated, replicas: 4, router: {name: least_loaded}}
    cluster: {mode: disaggregated,
              prefill: {replicas: 2, router: {name: least_loaded}, scheduler: {}},
              decode: {replicas: 2, router: {name: least_loaded}, scheduler: {...}},
              kv_transfer: {bandwidth: 50e9, latency_s: 0.0}}

Every replica is its own `build_stack` of the same model, engine, hardware, scheduler and
cache config (a pool's `scheduler` mapping overrides scheduler keys for that pool). The real
engine (`engine=mlx`) serves colocated clusters only: a handoff would have to move real KV.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping

from testbed.cluster.cluster import Cluster, Disaggregation
from testbed.cluster.handoff import HandoffExecutor, KVLink
from testbed.cluster.replica import Replica
from testbed.cluster.routers import make_router
from testbed.stack import Stack, build_stack

MODES = ("colocated", "disaggregated")


def build_cluster(cfg: Mapping) -> tuple[Cluster, Stack]:
    """The cluster `cfg["cluster"]` describes, and the first replica's stack (its model
    config and info describe them all)."""
    c = dict(cfg["cluster"])
    mode = c.get("mode")
    if mode == "colocated":
        stacks = [build_stack(cfg) for _ in range(_count(c, "replicas", "cluster"))]
        replicas = [Replica(i, "colocated", s.engine) for i, s in enumerate(stacks)]
        return Cluster(replicas, make_router(c["router"])), stacks[0]
    if mode != "disaggregated":
        raise ValueError(f"cluster.mode={mode!r}: choose one of {', '.join(MODES)}")
    if cfg["engine"]["kind"] != "sim":
        raise ValueError("a disaggregated cluster needs the simulator (engine=sim): moving real "
                         "KV between replicas is not implemented")
    prefill, decode = dict(c["prefill"]), dict(c["decode"])
    n_prefill = _count(prefill, "replicas", "cluster.prefill")
    n_decode = _count(decode, "replicas", "cluster.decode")
    prefill_stacks = [build_stack(_with_scheduler(cfg, prefill)) for _ in range(n_prefill)]
    decode_stacks = [build_stack(_with_scheduler(cfg, decode)) for _ in range(n_decode)]
    front = [Replica(i, "prefill", s.engine) for i, s in enumerate(prefill_stacks)]
    back = []
    for i, s in enumerate(decode_stacks):
        s.engine.executor = HandoffExecutor(s.engine.executor)
        back.append(Replica(n_prefill + i, "decode", s.engine))
    first = prefill_stacks[0]
    link = dict(c.get("kv_transfer") or {})
    kv_bytes = first.model_config.kv_bytes_per_token(first.info["dtype"])
    disagg = Disaggregation(back, make_router(decode["router"]),
                            KVLink(link.get("bandwidth"), float(link.get("latency_s") or 0.0)),
                            kv_bytes)
    return Cluster(front, make_router(prefill["router"]), disagg), first


def describe(cluster: Cluster) -> list[dict]:
    """Each replica's index and role, for run.json."""
    return [{"replica": r.index, "role": r.role} for r in cluster.replicas]


def _with_scheduler(cfg: Mapping, pool: Mapping) -> dict:
    out = copy.deepcopy(dict(cfg))
    out["scheduler"] = {**dict(cfg["scheduler"]), **dict(pool.get("scheduler") or {})}
    return out


def _count(node: Mapping, key: str, where: str) -> int:
    n = node.get(key)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"{where}.{key} must be an integer >= 1, got {n!r}")
    return n
