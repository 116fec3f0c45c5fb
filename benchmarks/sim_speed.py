"""Simulator speed: a whole trace through the simulated engine, timed.

    python benchmarks/sim_speed.py                     (Azure 2023 conversation, 19,366 requests,
                                                        vllm + prefix, Qwen2-7B on an H100)
    python benchmarks/sim_speed.py --record            (also write the Parquet logs, as a run does)
    python benchmarks/sim_speed.py scheduler=sarathi cache=radix trace=mooncake

Any further arguments are replay config overrides (`conf/config.yaml`). Prints requests,
steps, simulated seconds, wall seconds of the replay loop (the trace is loaded and the stack
built before the clock starts) and simulated seconds per wall second.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import testbed  # noqa: E402,F401  (fast BLAS before mlx)
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from experiments.replay import experiment_trace, trace_requests  # noqa: E402
from testbed.replay.driver import replay  # noqa: E402
from testbed.replay.recorder import Recorder  # noqa: E402
from testbed.stack import build_stack  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf"
DEFAULTS = ("trace=azure_conv", "engine=sim", "model=qwen2-7b",
            "hardware=h100", "scheduler=vllm", "cache=prefix")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help="write steps/requests Parquet logs")
    parser.add_argument("overrides", nargs="*", help="replay config overrides")
    args = parser.parse_args(argv)
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = OmegaConf.to_container(compose("config", overrides=[*DEFAULTS, *args.overrides]),
                                     resolve=True)
    stack = build_stack(cfg)
    requests = trace_requests(experiment_trace(cfg), cfg, stack.model_config.vocab_size)
    with tempfile.TemporaryDirectory() as tmp:
        recorder = Recorder(tmp, tokens=False) if args.record else None
        if recorder is not None:
            recorder.start({})
        counts = replay(requests, stack.engine, recorder)
        if recorder is not None:
            recorder.close()
    result = {"requests": counts.requests, "finished": counts.finished, "steps": counts.steps,
              "sim_seconds": counts.sim_seconds, "wall_seconds": counts.wall_seconds,
              "sim_per_wall": counts.sim_seconds / counts.wall_seconds}
    print(f"{cfg['trace'].get('name')}: {cfg['scheduler']['name']} + {cfg['cache']['name']}, "
          f"{stack.model_config.name} on {cfg['hardware']['name']}"
          f"{', logs written' if args.record else ''}")
    print(f"  requests           {result['requests']:,} ({result['finished']:,} finished)")
    print(f"  steps              {result['steps']:,}")
    print(f"  simulated seconds  {result['sim_seconds']:,.1f}")
    print(f"  wall seconds       {result['wall_seconds']:,.2f}")
    print(f"  sim s per wall s   {result['sim_per_wall']:,.1f}")
    return result


if __name__ == "__main__":
    main()
