"""A run that dies mid-way keeps what it did: readable Parquet tables, and a run.json that
says so (`failed: ...` when Python saw the failure; still `running` after a SIGKILL)."""
import json
import signal
import subprocess
import time

import numpy as np
import pytest

from analysis import load_run
from experiments.replay import run_experiment
from replay_runs import REPO, SIM_TINY, config, replay_command, replay_env, write_trace
from testbed.replay.driver import StalledError
from testbed.replay.recorder import read_run
from testbed.stack import build_stack

TABLES = ("steps.parquet", "requests.parquet", "tokens.parquet")


def spaced_trace(path, n: int, gap_s: float):
    rng = np.random.default_rng(0)
    return write_trace(path, [{"request_id": f"r{i:03d}", "arrival_s": i * gap_s,
                               "prompt_len": int(rng.integers(16, 200)),
                               "output_len": int(rng.integers(5, 30))} for i in range(n)])


def part_files(table_dir):
    return sorted(table_dir.glob("part-*.parquet")) if table_dir.is_dir() else []


def start_and_signal(tmp_path, sig: int, n: int = 80):
    """Replay on the wall clock (arrivals 0.1 s apart) in a subprocess; once two part files
    of requests are written, send `sig`. Returns the run directory and the exit code."""
    trace = spaced_trace(tmp_path / "trace.csv", n, gap_s=0.1)
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        replay_command(*SIM_TINY, "clock=wall", "trace=generic", f"trace.path={trace}",
                       "flush_every=5", f"hydra.run.dir={run_dir}"),
        cwd=REPO, env=replay_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while len(part_files(run_dir / "requests.parquet")) < 2:
            assert proc.poll() is None, f"the replay ended early:\n{proc.stdout.read()}"
            assert time.monotonic() < deadline, "no part files after 90 s"
            time.sleep(0.05)
        proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return run_dir, proc.returncode


def assert_partial_run_readable(run_dir, n_trace: int):
    data = read_run(run_dir)
    ids = data.requests["request_id"]
    assert 10 <= len(ids) < n_trace  # two flushes of 5 or more, but not the whole trace
    assert not ids.duplicated().any()
    assert set(ids) <= {f"r{i:03d}" for i in range(n_trace)}
    assert (data.requests["status"] == "finished").all()
    assert len(data.steps) > 0 and data.steps["step"].is_monotonic_increasing
    for table in TABLES:  # only whole part files and hidden temporaries
        for f in (run_dir / table).iterdir():
            assert f.name.startswith("part-") or f.name.startswith("."), f
    run = load_run(run_dir)  # analysis reads it too, computing the summary it lacks
    assert run.summary["n_requests"] == len(ids)
    return data


def test_sigkill_leaves_readable_tables(tmp_path):
    run_dir, code = start_and_signal(tmp_path, signal.SIGKILL)
    assert code == -signal.SIGKILL
    data = assert_partial_run_readable(run_dir, 80)
    assert data.meta["status"] == "running"  # nothing ran after the kill
    assert not (run_dir / "summary.json").exists()


def test_interrupt_marks_the_run_failed(tmp_path):
    run_dir, code = start_and_signal(tmp_path, signal.SIGINT)
    assert code != 0
    data = assert_partial_run_readable(run_dir, 80)
    assert data.meta["status"] == "failed: interrupted"
    assert data.meta["counts"]["requests"] == len(data.requests)  # every row was flushed


class FailingExecutor:
    """An executor that fails on its `fail_at`-th step (as a device error would)."""

    def __init__(self, inner, fail_at: int):
        self.inner, self.fail_at, self.calls = inner, fail_at, 0

    def execute(self, plan):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("device lost")
        return self.inner.execute(plan)


def test_exception_marks_the_run_failed_and_keeps_its_rows(tmp_path):
    trace = spaced_trace(tmp_path / "trace.csv", 40, gap_s=0.05)
    cfg = config(*SIM_TINY, "trace=generic", f"trace.path={trace}", "flush_every=1000")
    stack = build_stack(cfg)
    stack.engine.executor = FailingExecutor(stack.engine.executor, fail_at=151)
    with pytest.raises(RuntimeError, match="device lost"):
        run_experiment(cfg, tmp_path / "run", stack=stack)

    data = read_run(tmp_path / "run")
    assert data.meta["status"] == "failed: RuntimeError: device lost"
    assert len(data.steps) == 150  # buffered rows were flushed by the failure
    assert 0 < len(data.requests) < 40
    assert data.meta["counts"]["steps"] == 150
    assert not (tmp_path / "run" / "summary.json").exists()


def test_stalled_run_is_marked_failed(tmp_path):
    trace = spaced_trace(tmp_path / "trace.csv", 20, gap_s=0.05)
    cfg = config(*SIM_TINY, "trace=generic", f"trace.path={trace}", "max_steps=30")
    with pytest.raises(StalledError):
        run_experiment(cfg, tmp_path / "run")
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["status"].startswith("failed: StalledError: stopped after max_steps=30")
    assert len(read_run(tmp_path / "run").steps) == 30


def test_rerun_of_a_failed_run_starts_afresh(tmp_path):
    """A failed run's directory is replayed again (a sweep re-run does this), and its old
    part files must not mix into the new tables."""
    trace = spaced_trace(tmp_path / "trace.csv", 20, gap_s=0.05)
    overrides = (*SIM_TINY, "trace=generic", f"trace.path={trace}")
    with pytest.raises(StalledError):  # one part file a row: more parts than the re-run writes
        run_experiment(config(*overrides, "max_steps=40", "flush_every=1"), tmp_path / "run")
    summary = run_experiment(config(*overrides), tmp_path / "run")
    data = read_run(tmp_path / "run")
    assert data.meta["status"] == "complete"
    assert len(data.requests) == 20 and not data.requests["request_id"].duplicated().any()
    assert data.steps["step"].tolist() == list(range(len(data.steps)))
    assert summary["n_requests"] == 20
