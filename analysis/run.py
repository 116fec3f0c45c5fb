"""One run directory loaded for analysis: its tables, metadata, summary and Hydra config."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from testbed.metrics import SLO, summarize
from testbed.replay.recorder import read_run


@dataclass(slots=True)
class Run:
    path: Path
    requests: pd.DataFrame
    steps: pd.DataFrame
    tokens: pd.DataFrame | None  # None when the run did not record token times
    meta: dict[str, Any]  # run.json
    summary: dict[str, Any]  # summary.json, or computed from the tables when it is missing
    config: dict[str, Any] = field(default_factory=dict)  # .hydra/config.yaml
    overrides: dict[str, Any] = field(default_factory=dict)  # .hydra/overrides.yaml, parsed

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def label(self) -> str:
        """A short name for legends: its named overrides, else its policies, else its directory."""
        named = [f"{k}={v}" for k, v in self.overrides.items() if isinstance(v, str)]
        if named:
            return " ".join(named)
        policies = [str(self.config[g]["name"]) for g in ("scheduler", "cache")
                    if isinstance(self.config.get(g), dict) and "name" in self.config[g]]
        return "+".join(policies) or self.name


def load_run(run_dir: str | Path) -> Run:
    """Load a run directory written by the replay driver (complete, failed or killed)."""
    path = Path(run_dir)
    steps, requests, tokens, meta = read_run(path)
    config = _read_yaml(path / ".hydra" / "config.yaml") or {}
    overrides = load_overrides(path / ".hydra" / "overrides.yaml")
    summary_path = path / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
    else:
        slo = SLO.from_dict(config["slo"]) if isinstance(config.get("slo"), dict) else None
        summary = summarize(requests, steps, tokens, slo)
    return Run(path, requests, steps, tokens, meta, summary, config, overrides)


def load_overrides(path: Path) -> dict[str, Any]:
    """Hydra's overrides.yaml (a list of `key=value` strings) as {key: value}; {} if absent."""
    lines = _read_yaml(path)
    if lines is None:
        return {}
    if not isinstance(lines, list):
        raise ValueError(f"{path}: expected a list of `key=value` strings")
    return dict(parse_override(line, f"{path} item {i}") for i, line in enumerate(lines))


def parse_override(text: str, where: str = "override") -> tuple[str, Any]:
    """`trace.rate_scale=2` -> ("trace.rate_scale", 2). Values are read as YAML scalars;
    lists and mappings stay text. `+key=v` / `++key=v` add or force a key; `~key` deletes it
    (value None)."""
    if not isinstance(text, str):
        raise ValueError(f"{where}: expected a `key=value` string, got {text!r}")
    if text.startswith("~"):
        return text[1:].split("=", 1)[0], None
    key, sep, raw = text.lstrip("+").partition("=")
    if not sep or not key:
        raise ValueError(f"{where}: {text!r} is not of the form key=value")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key, value if isinstance(value, (str, int, float, bool)) or value is None else raw


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None
