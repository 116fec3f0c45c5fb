"""The main job: `python -m experiments.replay` with no arguments replays a CPU-sized sample
of the Azure conversation trace through vLLM + prefix caching around the real engine."""
import re

import mlx.core as mx
import pytest

from experiments.replay import experiment_trace
from replay_runs import config, run_replay
from testbed.replay.recorder import read_run
from testbed.stack import resolve_dtype
from testbed.traces import load_trace


def test_defaults_pick_the_main_job():
    cfg = config()
    assert cfg["engine"]["kind"] == "mlx" and cfg["engine"]["dtype"] == "auto"
    assert cfg["model"] == {"name": "qwen2-small", "source": "dummy"}
    assert (cfg["scheduler"]["name"], cfg["cache"]["name"]) == ("vllm", "prefix")
    assert cfg["trace"]["name"] == "azure_conv" and cfg["clock"]["kind"] == "virtual"
    assert cfg["trace"]["transforms"]["head"] == 100  # the sample, not the whole trace


def test_default_trace_is_a_scaled_head_of_azure_conv():
    sample = experiment_trace(config()).df
    whole = load_trace("azure_conv").df.iloc[:100]
    assert list(sample["request_id"]) == list(whole["request_id"])
    assert (sample["arrival_s"] == whole["arrival_s"]).all()  # the recorded times
    assert (sample["prompt_len"] <= 512).all() and (sample["output_len"] <= 256).all()
    short = whole["prompt_len"] * 0.25 <= 512  # not clipped: a quarter of the recorded length
    assert (sample["prompt_len"][short] - whole["prompt_len"][short] * 0.25).abs().max() <= 0.5
    assert 100 < sample["prompt_len"].mean() < 300 and 20 < sample["output_len"].mean() < 80


def test_picking_another_trace_drops_the_sample_sizing():
    """The sizing belongs to the sample trace: `trace=NAME` replays NAME as recorded."""
    for trace in ("azure_conv", "mooncake"):
        cfg = config("engine=sim", "model=qwen2-7b", "hardware=h100", f"trace={trace}")
        assert all(v is None for v in cfg["trace"]["transforms"].values())
        assert cfg["scheduler"]["max_num_seqs"] == 64  # as conf/scheduler/vllm.yaml has it
    assert len(experiment_trace(config("trace=azure_conv")).df) == len(load_trace("azure_conv").df)


def test_auto_dtype_is_float32_on_the_cpu_and_bfloat16_on_a_gpu(monkeypatch):
    assert mx.default_device().type == mx.cpu  # these machines
    assert resolve_dtype("auto") == resolve_dtype(None) == "float32"
    assert resolve_dtype("float16") == "float16"
    monkeypatch.setattr(mx, "default_device", lambda: mx.Device(mx.gpu))
    assert resolve_dtype("auto") == "bfloat16"


def test_main_job_command_prints_the_summary_and_where_outputs_went(tmp_path):
    """The default command on its first five requests (the slow test below runs it all)."""
    out = run_replay("trace.transforms.head=5", f"hydra.run.dir={tmp_path}", timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    for heading in ("Requests and throughput", "Latency", "Engine", "run directory:"):
        assert heading in out.stdout
    for name in ("requests.parquet", "steps.parquet", "tokens.parquet", "run.json",
                 "summary.json", "report", "figures"):
        assert re.search(rf"^  {name} +{re.escape(str(tmp_path))}", out.stdout, re.M), name
    data = read_run(tmp_path)
    assert data.meta["status"] == "complete" and len(data.requests) == 5
    assert data.meta["dtype"] == "float32" and data.meta["device"] == "Device(cpu, 0)"
    assert {"latency_cdf.png", "timeseries.png"} <= {p.name for p in (tmp_path / "figures").iterdir()}


@pytest.mark.slow
def test_main_job_as_shipped(tmp_path):
    """The README's main job, all of it (about a minute on 2 idle CPU cores)."""
    out = run_replay(f"hydra.run.dir={tmp_path}", timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    data = read_run(tmp_path)
    assert data.meta["status"] == "complete"
    assert (data.requests["status"] == "finished").all() and len(data.requests) == 100
