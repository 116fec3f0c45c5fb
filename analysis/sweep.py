"""A Hydra multirun directory as one table: a row per job, its overrides and its summary.

Columns: `job` (the job directory's name), `path`, `status` (from run.json), one column per
override key (`scheduler`, `trace.rate_scale`, ...), then the summary keys. Which columns
are overrides is kept in `frame.attrs["overrides"]`. Overrides whose values are names
(`scheduler=vllm`) are *policies*: they tell lines apart in figures. Numeric ones
(`trace.rate_scale=2`) are *parameters*: figures put them on an axis, through what was
measured (offered rate, KV capacity) rather than the knob itself.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from analysis.run import load_overrides, load_run

RATE_WORDS = ("rate",)  # a parameter that sets the request rate
CAPACITY_WORDS = ("memory", "blocks", "capacity")  # a parameter that sets the KV capacity


def is_run_dir(path: Path) -> bool:
    return (Path(path) / "run.json").is_file()


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The run directories directly under `sweep_dir`, numbered jobs in numeric order."""
    jobs = [p for p in Path(sweep_dir).iterdir() if p.is_dir() and is_run_dir(p)]
    return sorted(jobs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0,
                                       p.name))


def load_sweep(sweep_dir: str | Path) -> pd.DataFrame:
    """Every job's overrides and summary, one row per job (see the module docstring)."""
    sweep_dir = Path(sweep_dir)
    jobs = job_dirs(sweep_dir) if sweep_dir.is_dir() else []
    if not jobs:
        raise ValueError(f"{sweep_dir} holds no run directories (numbered jobs with run.json)")
    rows, override_keys = [], {}
    for job in jobs:
        overrides = load_overrides(job / ".hydra" / "overrides.yaml")
        override_keys.update(dict.fromkeys(overrides))
        meta = json.loads((job / "run.json").read_text())
        summary_path = job / "summary.json"
        summary = (json.loads(summary_path.read_text()) if summary_path.is_file()
                   else load_run(job).summary)
        rows.append({"job": job.name, "path": str(job), "status": meta.get("status"),
                     **overrides, **summary})
    frame = pd.DataFrame(rows)
    frame.attrs["overrides"] = list(override_keys)
    return frame


def write_results(sweep: pd.DataFrame, path: str | Path) -> Path:
    """Save a sweep table as Parquet (a directory gets `results.parquet` inside it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.parquet"
    frame = sweep.copy()
    for column in frame.columns[frame.dtypes == object]:
        kinds = {type(v) for v in frame[column] if v is not None and v == v}
        if len(kinds) > 1:  # e.g. an override that is a number in one job and a name in another
            frame[column] = frame[column].map(lambda v: None if v is None or v != v else str(v))
    frame.to_parquet(path, index=False)
    return path


def varying(sweep: pd.DataFrame) -> list[str]:
    """Override columns that take more than one value across the jobs."""
    return [c for c in sweep.attrs.get("overrides", [])
            if sweep[c].astype(str).nunique(dropna=False) > 1]


def policy_columns(sweep: pd.DataFrame) -> list[str]:
    """Varying overrides whose values are names: the policies compared."""
    return [c for c in varying(sweep) if sweep[c].map(lambda v: isinstance(v, str)).any()]


def parameter_columns(sweep: pd.DataFrame) -> list[str]:
    """Varying overrides with numeric values."""
    return [c for c in varying(sweep) if c not in policy_columns(sweep)]


def axis_parameter(sweep: pd.DataFrame, words: tuple[str, ...]) -> str | None:
    """The first numeric varying override whose key mentions one of `words`."""
    return next((c for c in parameter_columns(sweep) if any(w in c.lower() for w in words)), None)


def line_labels(sweep: pd.DataFrame, columns: list[str]) -> pd.Series:
    """A legend label per job from the given override columns (`scheduler=vllm ...`)."""
    if not columns:
        return pd.Series("all runs", index=sweep.index)
    return sweep[columns].apply(lambda row: " ".join(f"{c}={row[c]}" for c in columns), axis=1)
