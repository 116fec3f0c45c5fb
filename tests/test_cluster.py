"""The cluster simulator: conservation of requests, what each router promises, disaggregated
prefill/decode with its KV transfer, and agreement with the single-engine replay."""
import numpy as np
import pandas as pd
import pytest

from cluster_runs import SIM_TINY, cluster_config, replica_of, requests, run
from experiments.cluster import run_cluster_experiment
from experiments.replay import run_experiment
from replay_runs import SIM_TINY as REPLAY_SIM_TINY, config, write_trace
from testbed.cluster import build_cluster, make_router
from testbed.cluster.routers import LeastLoadedRouter
from testbed.model.config import named_config
from testbed.replay.recorder import read_run

ROUTERS = ("round_robin", "least_loaded", "prefix_affinity")


def poisson_rows(n: int, rate: float, seed: int) -> list[tuple]:
    """Poisson arrivals, random prompt and output lengths, no shared prefixes."""
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1 / rate, n))
    return [(float(t[i]), int(rng.integers(20, 200)), int(rng.integers(1, 40))) for i in range(n)]


def prefixed_rows(n: int, rate: float, seed: int, groups: int = 3, shared: int = 6) -> list[tuple]:
    """Prompts that start with one of `groups` shared prefixes of `shared` 16-token blocks,
    then blocks of their own."""
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1 / rate, n))
    rows = []
    for i in range(n):
        own = int(rng.integers(1, 6))
        g = i % groups
        hashes = [100 * g + b for b in range(shared)] + [10_000 * (i + 1) + b for b in range(own)]
        rows.append((float(t[i]), 16 * len(hashes), int(rng.integers(2, 30)), hashes))
    return rows


def assert_each_finished_once(rows, reqs) -> None:
    """Every request has exactly one row, finished with all its output tokens."""
    assert sorted(rows["request_id"]) == sorted(r.request_id for r in reqs)
    assert (rows["status"] == "finished").all()
    assert (rows["n_output_tokens"] == rows["output_len"]).all()


@pytest.mark.parametrize("router", ROUTERS)
def test_every_request_ends_exactly_once(tmp_path, router):
    cfg = cluster_config(*SIM_TINY, f"cluster/router={router}", "cluster.replicas=3",
                         "engine.kv_memory_gb=0.00015")
    reqs = requests(prefixed_rows(60, rate=200.0, seed=1))
    data, cluster = run(cfg, reqs, tmp_path)
    rows = data.requests
    assert_each_finished_once(rows, reqs)
    assert set(rows["replica"]) <= {0, 1, 2}
    # A request's tokens all come from the steps of the replica that served it.
    tokens = data.tokens.merge(rows[["request_id", "replica"]], on="request_id")
    assert len(tokens) == rows["output_len"].sum()
    ends = set(zip(data.steps["replica"], data.steps["t_end"]))
    assert all((r, t) in ends for r, t in zip(tokens["replica"], tokens["t"]))
    assert data.steps["n_preempted"].sum() > 0  # the small caches really were under pressure
    assert not any(r.engine.has_unfinished for r in cluster.replicas)


def test_disaggregated_every_request_ends_exactly_once(tmp_path):
    cfg = cluster_config(*SIM_TINY, "cluster=disaggregated", "cluster.prefill.replicas=2",
                         "cluster.decode.replicas=3", "engine.kv_memory_gb=0.00015")
    reqs = requests(prefixed_rows(60, rate=200.0, seed=2))
    data, cluster = run(cfg, reqs, tmp_path)
    rows = data.requests
    assert_each_finished_once(rows, reqs)
    assert len(data.tokens) == rows["output_len"].sum()


def test_round_robin_spreads_evenly(tmp_path):
    cfg = cluster_config(*SIM_TINY, "cluster/router=round_robin", "cluster.replicas=4")
    data, cluster = run(cfg, requests(poisson_rows(24, rate=5.0, seed=3)), tmp_path)
    assert data.requests["replica"].value_counts().to_dict() == {0: 6, 1: 6, 2: 6, 3: 6}
    ordered = data.requests.sort_values("arrival_s")
    assert list(ordered["replica"]) == [i % 4 for i in range(24)]


def outstanding(replica) -> int:
    """Tokens a replica still has to compute, from its unfinished sequences' own fields."""
    return sum(s.prompt_len + s.request.output_len - s.num_computed_tokens
               for s in replica.live.values())


def test_least_loaded_picks_a_replica_with_the_fewest_outstanding_tokens(tmp_path):
    class Checked(LeastLoadedRouter):
        decisions = 0

        def route(self, request, replicas):
            chosen = super().route(request, replicas)
            loads = [outstanding(r) for r in replicas]
            assert outstanding(chosen) == min(loads), (loads, chosen.index)
            Checked.decisions += 1
            return chosen

    cfg = cluster_config(*SIM_TINY, "cluster.replicas=3")
    cluster = build_cluster(cfg)[0]
    cluster.router = Checked()
    data, _ = run(cfg, requests(poisson_rows(80, rate=30.0, seed=4)), tmp_path, cluster)
    assert Checked.decisions == 80
    assert data.requests["replica"].nunique() == 3  # load moved around


def test_prefix_affinity_keeps_a_prefix_on_one_replica(tmp_path):
    # Arrivals far enough apart that each prompt is computed before the next one arrives.
    cfg = cluster_config(*SIM_TINY, "cluster/router=prefix_affinity", "cluster.replicas=3")
    reqs = requests(prefixed_rows(30, rate=0.5, seed=5))
    data, _ = run(cfg, reqs, tmp_path)
    where = replica_of(data.requests)
    groups = {}
    for i, r in enumerate(reqs):
        groups.setdefault(i % 3, set()).add(where[r.request_id])
    assert all(len(replicas) == 1 for replicas in groups.values()), groups
    assert len(set().union(*groups.values())) == 3  # the three prefixes spread out
    later = data.requests[data.requests["request_id"].isin([r.request_id for r in reqs[3:]])]
    assert (later["cached_prompt_tokens"] >= 6 * 16).all()


def test_prefix_affinity_hits_more_than_round_robin_on_mooncake(tmp_path):
    rates = {}
    for router in ("round_robin", "prefix_affinity"):
        cfg = cluster_config("trace=mooncake", "trace.transforms.head=300", "report=false",
                             "progress=false", "record_tokens=false", "cluster.replicas=4",
                             f"cluster/router={router}")
        rates[router] = run_cluster_experiment(cfg, tmp_path / router)["prefix_hit_rate"]
    assert rates["prefix_affinity"] > 1.5 * rates["round_robin"] > 0, rates


def test_prefix_affinity_load_gap_falls_back_to_least_loaded():
    cfg = cluster_config(*SIM_TINY, "cluster.replicas=2")
    cluster = build_cluster(cfg)[0]
    a, b = cluster.front
    req = requests([(0.0, 64, 8, [1, 2, 3, 4])])[0]
    a.admit(req, 0.0)
    while a.engine.has_unfinished:  # computes the prompt: its blocks are cached on a
        a.step()
    busy = requests([(0.0, 1000, 100)])[0]
    a.admit(busy, 0.0)
    probe = requests([(1.0, 64, 8, [1, 2, 3, 4])])[0]
    assert make_router({"name": "prefix_affinity"}).route(probe, [a, b]) is a
    gap = make_router({"name": "prefix_affinity", "max_load_gap": 500})
    assert gap.route(probe, [a, b]) is b


def test_disaggregated_charges_the_kv_transfer(tmp_path):
    """Sparse arrivals (no link queueing): each request's TTFT grows by exactly its KV's
    transfer time over the link, and its E2E by at least that."""
    reqs = requests(poisson_rows(20, rate=0.2, seed=6))
    runs = {}
    for name, bandwidth in (("instant", "null"), ("slow", "2e6")):
        cfg = cluster_config(*SIM_TINY, "cluster=disaggregated",
                             f"cluster.kv_transfer.bandwidth={bandwidth}")
        runs[name] = run(cfg, reqs, tmp_path / name)[0].requests.set_index("request_id")
    fast, slow = runs["instant"], runs["slow"]
    kv_bytes = named_config("qwen2-tiny").kv_bytes_per_token("bfloat16")
    decoded = slow["output_len"] > 1
    transfer = slow["prompt_len"] * kv_bytes / 2e6
    assert (fast["kv_transfer_s"] == 0).all()
    np.testing.assert_allclose(slow.loc[decoded, "kv_transfer_s"], transfer[decoded], rtol=1e-9)
    np.testing.assert_allclose((slow["ttft"] - fast["ttft"])[decoded], transfer[decoded], rtol=1e-6)
    assert ((slow["e2e"] - fast["e2e"])[decoded] >= transfer[decoded] * (1 - 1e-9)).all()
    assert (slow.loc[~decoded, "ttft"] == fast.loc[~decoded, "ttft"]).all()  # nothing to move


def test_disaggregated_decode_happens_on_decode_replicas(tmp_path):
    cfg = cluster_config(*SIM_TINY, "cluster=disaggregated", "cluster.prefill.replicas=2",
                         "cluster.decode.replicas=2")
    data, cluster = run(cfg, requests(poisson_rows(40, rate=20.0, seed=7)), tmp_path)
    rows, steps = data.requests, data.steps
    roles = {r.index: r.role for r in cluster.replicas}
    decoded = rows["output_len"] > 1
    assert {roles[i] for i in rows.loc[decoded, "replica"]} == {"decode"}
    assert {roles[i] for i in rows["prefill_replica"]} == {"prefill"}
    assert (rows.loc[~decoded, "replica"] == rows.loc[~decoded, "prefill_replica"]).all()
    on_prefill = steps["replica"].map(roles) == "prefill"
    assert (steps.loc[on_prefill, "n_decode_seqs"] == 0).all()  # prefill replicas never decode
    # Each decode replica's first step for a request costs a decode, not the prompt again.
    first_tokens = data.tokens[data.tokens["index"] == 1].merge(rows, on="request_id")
    assert len(first_tokens) == decoded.sum()


def test_one_replica_equals_the_single_engine_replay(tmp_path):
    rows = [{"request_id": f"q{i}", "arrival_s": 0.002 * i, "prompt_len": 30 + 7 * i,
             "output_len": 3 + i % 5} for i in range(30)]
    trace = write_trace(tmp_path / "trace.csv", rows)
    common = ("trace=generic", f"trace.path={trace}", "engine.kv_memory_gb=0.0001")
    single = run_experiment(config(*REPLAY_SIM_TINY, *common), tmp_path / "single")
    cluster = run_cluster_experiment(
        cluster_config(*SIM_TINY, "record_tokens=true", "cluster.replicas=1", *common),
        tmp_path / "cluster")
    assert single == cluster
    a, b = read_run(tmp_path / "single"), read_run(tmp_path / "cluster")
    pd.testing.assert_frame_equal(a.requests, b.requests.drop(
        columns=["replica", "prefill_replica", "kv_transfer_s"]))
    pd.testing.assert_frame_equal(a.steps, b.steps.drop(columns=["replica"]))
    assert a.steps["n_preempted"].sum() > 0


def test_cluster_experiment_writes_replica_summaries(tmp_path):
    cfg = cluster_config(*SIM_TINY, "trace.transforms.head=40", "cluster.replicas=2")
    summary = run_cluster_experiment(cfg, tmp_path)
    replicas = pd.read_json(tmp_path / "replicas.json", orient="records", typ="series")
    per = list(replicas["replicas"])
    assert [r["replica"] for r in per] == [0, 1]
    assert sum(r["n_requests"] for r in per) == summary["n_requests"] == 40
    assert sum(r["n_steps"] for r in per) == summary["n_steps"]
    assert all(0 < r["busy_frac"] <= 1 for r in per)


def test_real_engine_cluster(tmp_path):
    cfg = cluster_config("engine=mlx", "model=qwen2-tiny", "engine.kv_memory_gb=0.01",
                         "engine.host_kv_memory_gb=0", "cluster.replicas=2", "report=false",
                         "progress=false")
    reqs = requests(poisson_rows(6, rate=10.0, seed=8))
    for r in reqs:
        r.prompt_token_ids = list(range(1, r.prompt_len + 1))
    data, _ = run(cfg, reqs, tmp_path)
    assert (data.requests["status"] == "finished").all()
    assert set(data.requests["replica"]) == {0, 1}
    assert data.steps["seconds"].gt(0).all()


@pytest.mark.parametrize("overrides, message", [
    (("cluster.replicas=0",), "cluster.replicas"),
    (("cluster.router.name=nearest",), "unknown router"),
    (("cluster.mode=mesh",), "cluster.mode"),
    (("cluster=disaggregated", "engine=mlx"), "simulator"),
    (("cluster=disaggregated", "cluster.kv_transfer.bandwidth=0"), "bandwidth"),
])
def test_bad_cluster_configs_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_cluster(cluster_config(*SIM_TINY, *overrides))


@pytest.mark.parametrize("topology", [("cluster.replicas=3", "cluster/router=least_loaded"),
                                      ("cluster=disaggregated", "cluster.decode.replicas=3")])
def test_fast_forward_changes_nothing(tmp_path, topology):
    """Runs of decode steps taken at once, up to each replica's horizon, give the very same
    logs as every replica stepping one step at a time."""
    reqs = requests(prefixed_rows(80, rate=60.0, seed=9))
    tables = {}
    for ff in ("true", "false"):
        cfg = cluster_config(*SIM_TINY, *topology, f"engine.fast_forward={ff}",
                             "engine.kv_memory_gb=0.0003")
        tables[ff] = run(cfg, reqs, tmp_path / ff)[0]
    a, b = tables["true"], tables["false"]
    assert len(a.steps) == len(b.steps) > len(reqs)

    def ordered(frame, keys):  # rows come in the order replicas were stepped, not in time
        return frame.sort_values(keys).reset_index(drop=True)

    pd.testing.assert_frame_equal(ordered(a.requests, ["request_id"]),
                                  ordered(b.requests, ["request_id"]))
    pd.testing.assert_frame_equal(ordered(a.tokens, ["request_id", "index"]),
                                  ordered(b.tokens, ["request_id", "index"]))
    pd.testing.assert_frame_equal(ordered(a.steps, ["replica", "step"]),
                                  ordered(b.steps, ["replica", "step"]), check_dtype=False)
