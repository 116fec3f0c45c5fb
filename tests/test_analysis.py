"""Analysis: loading runs and sweeps; run and sweep reports, their figures, and their numbers
recomputed from the Parquet files."""
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from analysis import load_run, load_sweep, write_results
from analysis.report import write_report
from analysis.run import parse_override
from testbed.metrics import times_from_tokens
from fakes_runs import write_fake_run, write_fake_sweep
from report_checks import assert_valid_figure, figure_names, markdown_tables, recomputed

SLO_CONFIG = {"slo": {"ttft_s": 0.5, "tpot_s": 0.05, "e2e_s": None},
              "scheduler": {"name": "vllm"}, "cache": {"name": "prefix"}}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return write_fake_run(tmp_path_factory.mktemp("run") / "run", rate=8.0, kv_blocks=32,
                          config=SLO_CONFIG)


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    return write_fake_sweep(tmp_path_factory.mktemp("sweep"),
                            {"scheduler": ["vllm", "sarathi"], "trace.rate_scale": [1, 2]})


# ---- loading ----

def test_load_run(run_dir):
    run = load_run(run_dir)
    assert run.summary == json.loads((run_dir / "summary.json").read_text())
    assert run.meta["status"] == "complete" and run.config == SLO_CONFIG and run.overrides == {}
    assert run.label == "vllm+prefix"
    assert len(run.requests) == run.summary["n_requests"] and run.tokens is not None


def test_load_run_computes_a_missing_summary(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / "summary.json").unlink()
    assert load_run(copy).summary == load_run(run_dir).summary  # SLO from .hydra/config.yaml


@pytest.mark.parametrize("text, want", [
    ("scheduler=vllm", ("scheduler", "vllm")),
    ("trace.rate_scale=2", ("trace.rate_scale", 2)),
    ("engine.kv_memory_gb=0.5", ("engine.kv_memory_gb", 0.5)),
    ("+slo.ttft_s=null", ("slo.ttft_s", None)),
    ("++trace.path=a=b.csv", ("trace.path", "a=b.csv")),
    ("scheduler.policy=[1,2]", ("scheduler.policy", "[1,2]")),
    ("~cache", ("cache", None)),
])
def test_parse_override(text, want):
    assert parse_override(text) == want


def test_parse_override_rejects_a_bare_word():
    with pytest.raises(ValueError, match="overrides.yaml item 3.*'vllm'"):
        parse_override("vllm", "overrides.yaml item 3")


def test_load_sweep(sweep_dir, tmp_path):
    sweep = load_sweep(sweep_dir)
    assert sweep["job"].tolist() == ["0", "1", "2", "3"]
    assert sweep.attrs["overrides"] == ["scheduler", "trace.rate_scale"]
    assert sweep["scheduler"].tolist() == ["vllm", "vllm", "sarathi", "sarathi"]
    assert sweep["trace.rate_scale"].tolist() == [1, 2, 1, 2]
    assert (sweep["status"] == "complete").all()
    for _, row in sweep.iterrows():
        summary = json.loads((sweep_dir / row["job"] / "summary.json").read_text())
        assert row["ttft_p99_s"] == summary["ttft_p99_s"]
    back = pd.read_parquet(write_results(sweep, tmp_path))
    pd.testing.assert_frame_equal(back, sweep, check_dtype=False)


def test_load_sweep_summarizes_a_run_that_left_no_summary(sweep_dir, tmp_path):
    copy = tmp_path / "sweep"
    shutil.copytree(sweep_dir, copy, ignore=shutil.ignore_patterns("figures", "report.*"))
    (copy / "2" / "summary.json").unlink()
    got, want = load_sweep(copy), load_sweep(sweep_dir)
    assert got.loc[2, "ttft_p99_s"] == pytest.approx(want.loc[2, "ttft_p99_s"])


def test_token_times_agree_with_request_rows(run_dir):
    run = load_run(run_dir)
    from_tokens = times_from_tokens(run.tokens).set_index("request_id")
    done = run.requests[run.requests["status"] == "finished"].set_index("request_id")
    assert set(from_tokens.index) == set(done.index)
    from_tokens = from_tokens.loc[done.index]
    assert from_tokens["first_token_s"].tolist() == done["first_token_s"].tolist()
    assert from_tokens["finish_s"].tolist() == done["finish_s"].tolist()
    assert from_tokens["n_output_tokens"].tolist() == done["n_output_tokens"].tolist()


def test_load_sweep_needs_runs(tmp_path):
    with pytest.raises(ValueError, match="no run directories"):
        load_sweep(tmp_path)


# ---- reports and figures ----

def test_run_report_figures_and_numbers(run_dir):
    path = write_report(run_dir)
    assert path == run_dir / "report.md"
    figures = run_dir / "figures"
    assert figure_names(figures) == {"latency_cdf", "timeseries", "step_time_vs_shape"}
    for name in figure_names(figures):
        assert_valid_figure(figures, name)

    md = path.read_text()
    tables = markdown_tables(md)
    assert set(tables) == {"Requests and throughput", "Latency", "Engine"}
    cells = {**tables["Requests and throughput"], **tables["Latency"], **tables["Engine"]}
    want = recomputed(run_dir)
    assert want["preemptions"] > 0 and want["rejected"] == 1  # the run exercises both
    for label, value in want.items():
        got = [float(c) for c in cells[label]]
        values = value if isinstance(value, list) else [value]
        assert got == pytest.approx(values, rel=6e-4), label  # 4 significant digits

    html = (run_dir / "report.html").read_text()
    assert html.count("<img src='data:image/png;base64,") == 3
    assert "<td>TTFT (s)</td>" in html
    for name in figure_names(figures):
        assert f"figures/{name}.png" in md


def test_sweep_report(sweep_dir):
    write_report(sweep_dir)
    figures = sweep_dir / "figures"
    assert figure_names(figures) == {"latency_vs_rate", "latency_cdf_trace.rate_scale=1",
                                     "latency_cdf_trace.rate_scale=2"}  # no capacity was swept
    for name in figure_names(figures):
        assert_valid_figure(figures, name)
    assert (sweep_dir / "results.parquet").is_file()
    runs = markdown_tables((sweep_dir / "report.md").read_text())["Runs"]
    for job in ("0", "1", "2", "3"):
        status, scheduler, rate, throughput, *_ = runs[job]
        want = recomputed(sweep_dir / job)
        assert float(throughput) == pytest.approx(want["throughput (req/s)"], rel=6e-4)
    assert runs["3"][1:3] == ["sarathi", "2"]
