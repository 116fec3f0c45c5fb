"""Analysis reports for the other kinds of sweep (cache capacity, simulator against the real
engine), run comparison from the command line, and runs without token times."""
from pathlib import Path

import pytest

from analysis import load_sweep
from analysis.figures import relative_errors
from analysis.report import main, write_report
from fakes_runs import write_fake_run, write_fake_sweep
from report_checks import assert_valid_figure, figure_names, markdown_tables, read_tables


def test_hit_rate_sweep_report(tmp_path):
    sweep_dir = write_fake_sweep(tmp_path, {"cache.eviction": ["lru", "fifo"],
                                            "engine.kv_memory_gb": [0.125, 0.25]}, n_requests=20)
    write_report(sweep_dir)
    names = figure_names(sweep_dir / "figures")
    assert "hit_rate_vs_capacity" in names and "latency_vs_rate" not in names
    assert_valid_figure(sweep_dir / "figures", "hit_rate_vs_capacity")
    sweep = load_sweep(sweep_dir)
    for _, row in sweep.iterrows():
        requests, steps, _ = read_tables(Path(row["path"]))
        admitted = requests[requests["status"] != "rejected"]
        assert row["prefix_hit_rate"] == pytest.approx(
            admitted["cached_prompt_tokens"].sum() / admitted["prompt_len"].sum())
        assert row["kv_capacity_blocks"] == 256 * row["engine.kv_memory_gb"]


def test_sim_vs_real_sweep_report(tmp_path):
    sweep_dir = write_fake_sweep(tmp_path, {"engine": ["mlx", "sim"]}, n_requests=20)
    write_report(sweep_dir)
    names = figure_names(sweep_dir / "figures")
    assert names == {"latency_cdf", "sim_vs_real_0_1"}
    assert_valid_figure(sweep_dir / "figures", "sim_vs_real_0_1")


def test_relative_errors_by_hand():
    real = {"throughput_req_s": 2.0, "ttft_p99_s": 0.5, "tpot_p99_s": None, "e2e_p99_s": 0.0}
    sim = {"throughput_req_s": 2.5, "ttft_p99_s": 0.4, "tpot_p99_s": 0.1, "e2e_p99_s": 1.0}
    assert relative_errors(real, sim) == pytest.approx({"throughput": 0.25, "TTFT p99": -0.2})


def test_cli_compare_and_a_run_without_tokens_or_hits(tmp_path, capsys):
    a = write_fake_run(tmp_path / "a", n_requests=15, prefix=False, tokens=False)
    b = write_fake_run(tmp_path / "b", n_requests=15, prefix=False, tokens=False, engine="sim")
    assert main([str(a), "--compare", str(b)]) == 0
    assert capsys.readouterr().out.strip() == str(a / "report.md")
    names = figure_names(a / "figures")
    assert names == {"latency_cdf", "timeseries", "step_time_vs_shape", "sim_vs_real"}
    assert_valid_figure(a / "figures", "sim_vs_real")
    latency = markdown_tables((a / "report.md").read_text())["Latency"]
    assert latency["ITL (s)"] == ["-"] * 4  # no token times recorded


def test_cli_errors(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 2
    assert "no run directories" in capsys.readouterr().err
