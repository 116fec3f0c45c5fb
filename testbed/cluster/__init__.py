"""A cluster of serving replicas on one virtual clock: routers (round robin, least loaded,
prefix affinity) and disaggregated prefill/decode pools with a KV transfer cost."""
from testbed.cluster.build import build_cluster, describe
from testbed.cluster.cluster import Cluster, Disaggregation, Ended, run_cluster
from testbed.cluster.handoff import HandoffExecutor, KVLink
from testbed.cluster.replica import Replica
from testbed.cluster.routers import ROUTERS, Router, make_router
from testbed.cluster.summary import format_replicas, replica_summaries

__all__ = ["Cluster", "Disaggregation", "Ended", "HandoffExecutor", "KVLink", "Replica",
           "ROUTERS", "Router", "build_cluster", "describe", "format_replicas", "make_router",
           "replica_summaries", "run_cluster"]
