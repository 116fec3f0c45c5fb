"""Helpers for the replay and experiment tests: the Hydra config as the replay sees it,
small trace files, and subprocess runs of the replay entry point."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

# A quick simulated stack: the whole trace as recorded (tests pick a head), the tiny model with a KV budget of its size
# (the hardware's whole memory would be millions of blocks), no report or progress line.
SIM_TINY = ("trace=azure_conv", "engine=sim", "model=qwen2-tiny", "hardware=cpu",
            "engine.kv_memory_gb=0.01", "engine.host_kv_memory_gb=0.01",
            "report=false", "progress=false")
# The real MLX engine on the tiny model.
MLX_TINY = ("trace=azure_conv", "engine=mlx", "model=qwen2-tiny", "engine.kv_memory_gb=0.01",
            "engine.host_kv_memory_gb=0", "report=false", "progress=false")


def config(*overrides: str, name: str = "config") -> dict:
    """The config `conf/<name>.yaml` (the replay's by default) with `overrides`, resolved to
    plain data."""
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(name, overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)


def write_trace(path: Path, rows: list[dict]) -> Path:
    """A generic CSV trace (`trace=generic trace.path=...`) with the given rows."""
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def replay_command(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "experiments.replay", *overrides]


def replay_env() -> dict[str, str]:
    """This environment, with Hydra's short error reports (the ones users see)."""
    return {**os.environ, "HYDRA_FULL_ERROR": "0"}


def run_replay(*overrides: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m experiments.replay OVERRIDES` in the repository; output captured."""
    return subprocess.run(replay_command(*overrides), cwd=REPO, env=replay_env(),
                          capture_output=True, text=True, timeout=timeout)
