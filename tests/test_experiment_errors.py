"""Bad input to the replay experiment fails at once with an error that names what is wrong:
the policy name and the choices, the trace file with its line and field, the model and the
hardware it does not fit."""
import pytest

from experiments.replay import run_experiment
from replay_runs import MLX_TINY, SIM_TINY, config, run_replay, write_trace
from testbed.sim.memory import DoesNotFitError
from testbed.traces.schema import TraceError


SYNTHETIC = ("trace=synthetic", "trace.synthetic.n=5")


def replay(tmp_path, *overrides):
    return run_experiment(config(*SIM_TINY, *overrides), tmp_path / "run")


@pytest.mark.parametrize("override, message", [
    ("scheduler.name=fifo", r"unknown scheduler 'fifo'; choose one of: .*sarathi.*vllm"),
    ("cache.name=lru_cache", r"unknown KV manager 'lru_cache'; choose one of: .*paged.*prefix"),
    ("cache.eviction=random", r"unknown eviction policy 'random'; choose one of: lru, lfu, fifo"),
    ("engine.kind=tpu", r"engine.kind='tpu': choose one of mlx, sim"),
    ("clock.kind=lunar", r"unknown clock 'lunar'; choose one of: virtual, wall"),
    ("trace.transforms.rate_scale=-1", r"rate_scale: factor must be > 0, got -1"),
])
def test_unknown_names_and_bad_values_are_named(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        replay(tmp_path, *SYNTHETIC, override)
    assert not (tmp_path / "run" / "run.json").exists()  # nothing started


def test_unknown_config_group_option_lists_the_choices():
    out = run_replay("scheduler=fifo")
    assert out.returncode != 0
    assert "Could not find 'scheduler/fifo'" in out.stderr
    assert "sarathi" in out.stderr and "vllm" in out.stderr  # Hydra lists the available options


@pytest.mark.parametrize("text, where", [
    ("arrival_s,prompt_len,output_len\n0.0,10,5\n0.5,ten,5\n", r"line 3, field 'prompt_len'"),
    ("arrival_s,prompt_len,output_len\n0.0,10,5\n0.5,10,-4\n", r"line 3, field 'output_len'"),
    ("arrival_s,prompt_len\n0.0,10\n", r"line 1, field 'output_len': missing column"),
])
def test_malformed_trace_names_file_line_and_field(tmp_path, text, where):
    path = tmp_path / "trace.csv"
    path.write_text(text)
    with pytest.raises(TraceError, match=rf"{path}, {where}"):
        replay(tmp_path, "trace=generic", f"trace.path={path}")


def test_malformed_trace_through_the_command_line(tmp_path):
    path = tmp_path / "trace.csv"
    path.write_text("arrival_s,prompt_len,output_len\n0.0,10,5\n0.5,ten,5\n")
    out = run_replay(*SIM_TINY, "trace=generic", f"trace.path={path}",
                     f"hydra.run.dir={tmp_path / 'run'}")
    assert out.returncode != 0
    assert f"{path}, line 3, field 'prompt_len': 'ten' is not a number" in out.stderr


def test_missing_trace_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.csv does not exist"):
        replay(tmp_path, "trace=generic", f"trace.path={tmp_path / 'nowhere.csv'}")


def test_model_larger_than_the_hardware(tmp_path):
    with pytest.raises(DoesNotFitError, match=r"qwen2-72b bfloat16 needs 145 GB of weights; "
                                              r"m4_pro has 48 GB"):
        replay(tmp_path, *SYNTHETIC, "model=qwen2-72b", "hardware=m4_pro", "engine.kv_memory_gb=null")
    assert issubclass(DoesNotFitError, ValueError)


def test_kv_budget_too_small_for_one_block(tmp_path):
    trace = write_trace(tmp_path / "t.csv", [{"arrival_s": 0, "prompt_len": 8, "output_len": 2}])
    cfg = config(*MLX_TINY, "engine.kv_memory_gb=0.000001", "trace=generic", f"trace.path={trace}")
    with pytest.raises(ValueError, match=r"KV budget of 1000 bytes holds no block of 16 tokens "
                                         r"for qwen2-tiny"):
        run_experiment(cfg, tmp_path / "run")
