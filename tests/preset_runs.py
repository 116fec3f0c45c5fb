"""Running a reproduction preset at a tiny scale for the preset tests: `python -m
experiments.reproduce NAME` in its own process, then the comparison it wrote."""
from __future__ import annotations

import subprocess
import sys

import pandas as pd

from experiments.reproduce import comparison_of
from replay_runs import REPO, replay_env

# One process for the whole sweep (no worker pool to start); the real-engine presets pin their
# joblib launcher to one run at a time instead.
QUICK = ("hydra/launcher=basic",)


def reproduce(tmp_path, name: str, *overrides: str) -> tuple[str, pd.DataFrame]:
    """Run the preset; returns comparison.md's text and comparison.parquet (a row per run)."""
    sweep = tmp_path / name
    done = subprocess.run([sys.executable, "-m", "experiments.reproduce", name,
                           "--sweep-dir", str(sweep), *(() if name.endswith("_cpu") else QUICK), *overrides],
                          cwd=REPO, env=replay_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out, figure = sweep / "comparison", comparison_of(name)  # figures take the comparison's name
    assert (out / f"{figure}.png").is_file() and (out / f"{figure}.pdf").is_file()
    runs = pd.read_parquet(out / "comparison.parquet")
    assert (runs["status"] == "complete").all()
    assert (runs["n_finished"] + runs["n_rejected"] == runs["n_requests"]).all()
    return (out / "comparison.md").read_text(), runs


def top(runs: pd.DataFrame) -> pd.DataFrame:
    """Each policy's run at the highest offered rate, indexed by policy."""
    return runs.loc[runs.groupby("label")["offered_rate_req_s"].idxmax()].set_index("label")
