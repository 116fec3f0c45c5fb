"""A Hydra multirun through the joblib launcher: one run directory per parameter value, a
results.parquet with a row each, and a re-run of the same sweep that skips completed runs."""
import json
import re

import pandas as pd
import pytest

from replay_runs import SIM_TINY, run_replay

SWEEP = (*SIM_TINY, "trace=synthetic", "trace.synthetic.n=40", "trace.transforms.rate_scale=1,2")


def outputs(job_dir):
    """Every file a run wrote, with its modification time."""
    files = [p for p in job_dir.rglob("*") if p.is_file() and ".hydra" not in p.parts]
    return {str(p.relative_to(job_dir)): p.stat().st_mtime_ns for p in files}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    sweep_dir = tmp_path_factory.mktemp("sweep")
    first = run_replay("-m", *SWEEP, f"hydra.sweep.dir={sweep_dir}")
    assert first.returncode == 0, first.stdout + first.stderr
    return sweep_dir, first


def job_dirs(sweep_dir):
    return sorted(p.parent for p in sweep_dir.glob("*/run.json"))


def test_one_run_directory_per_value(sweep):
    sweep_dir, _ = sweep
    jobs = job_dirs(sweep_dir)
    assert sorted(re.search(r"rate_scale=(\d+)", j.name)[1] for j in jobs) == ["1", "2"]
    for job in jobs:
        assert json.loads((job / "run.json").read_text())["status"] == "complete"
        assert (job / "summary.json").is_file() and (job / "requests.parquet").is_dir()


def test_results_table_has_a_row_per_run(sweep):
    sweep_dir, first = sweep
    results = pd.read_parquet(sweep_dir / "results.parquet")
    assert "[sweep] 2 runs" in first.stdout
    assert len(results) == 2
    assert (results["status"] == "complete").all()
    by_rate = results.set_index("trace.transforms.rate_scale")
    assert sorted(by_rate.index) == [1, 2]
    assert (by_rate["n_requests"] == 40).all()
    # rate_scale divides every arrival time, so the offered rate doubles exactly
    assert by_rate.loc[2, "offered_rate_req_s"] == pytest.approx(2 * by_rate.loc[1, "offered_rate_req_s"])


def test_rerun_skips_completed_runs(sweep):
    sweep_dir, _ = sweep
    before = {job.name: outputs(job) for job in job_dirs(sweep_dir)}
    again = run_replay("-m", *SWEEP, f"hydra.sweep.dir={sweep_dir}")
    assert again.returncode == 0, again.stdout + again.stderr
    assert {job.name: outputs(job) for job in job_dirs(sweep_dir)} == before
    assert len(pd.read_parquet(sweep_dir / "results.parquet")) == 2
