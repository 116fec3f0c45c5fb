"""Reproduce a published comparison in one command: a preset's sweep, then its figures and table.

    python -m experiments.reproduce NAME [--sweep-dir DIR] [--out DIR] [overrides...]

NAME is an experiment preset with a comparison (`conf/experiment/NAME.yaml` whose config
has `paper.preset`): vllm_paging, sarathi_chunking, orca_iteration, prefix_capacity and
sjf_vs_fcfs run the simulator at the papers' scale, the same names ending in `_cpu` the real
engine at a CPU's scale. The sweep is the preset's multirun, `python -m experiments.replay
-m experiment=NAME hydra.sweep.dir=DIR [overrides]`, run as its own process; runs already
completed in DIR are skipped, so an interrupted reproduction picks up where it stopped. Then
`analysis.papers` writes the figures, comparison.md and comparison.parquet into `--out`
(default DIR/comparison). Overrides change the preset like any Hydra override, e.g.
`trace.transforms.rate_scale=0.2,0.4` for fewer load points.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


def comparison_of(name: str) -> str | None:
    """The comparison experiment preset `name` makes: its `paper.preset`, else that of a
    preset it extends (named in its defaults list), else None."""
    path = CONF / "experiment" / f"{name}.yaml"
    if not path.is_file():
        return None
    preset = OmegaConf.load(path)
    parents = [d for d in preset.get("defaults", []) if isinstance(d, str) and d != "_self_"]
    return OmegaConf.select(preset, "paper.preset") or next(filter(None, map(comparison_of, parents)), None)


def presets() -> list[str]:
    """The experiment presets that make a comparison."""
    return [p.stem for p in sorted((CONF / "experiment").glob("*.yaml")) if comparison_of(p.stem)]


def sweep_command(name: str, sweep_dir: Path, overrides: list[str]) -> list[str]:
    """The multirun that makes the preset's runs."""
    return [sys.executable, "-m", "experiments.replay", "-m", f"experiment={name}",
            f"hydra.sweep.dir={sweep_dir}", *overrides]


def reproduce(name: str, sweep_dir: str | Path | None = None, out: str | Path | None = None,
              overrides: list[str] | tuple[str, ...] = ()) -> Path:
    """Run the preset's sweep into `sweep_dir` and write its comparison; returns comparison.md."""
    if comparison_of(name) is None:
        raise ValueError(f"{name!r} is no preset with a comparison; choose one of: "
                         f"{', '.join(presets())}")
    sweep_dir = Path(sweep_dir or REPO / "multirun" / "reproduce" / name).resolve()
    command = sweep_command(name, sweep_dir, list(overrides))
    print("[reproduce] " + " ".join(command[1:]), flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"the sweep of {name} failed (exit status {done.returncode}); "
                           f"completed runs stay in {sweep_dir}")
    print(f"[reproduce] sweep took {time.perf_counter() - start:,.0f} s", flush=True)
    from analysis.papers import write_comparison

    return write_comparison(sweep_dir, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.reproduce",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("name", help="the preset to reproduce (conf/experiment/NAME.yaml)")
    parser.add_argument("--sweep-dir", help="the multirun directory (default multirun/reproduce/NAME)")
    parser.add_argument("--out", help="figures and comparison.md (default SWEEP_DIR/comparison)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the preset")
    args = parser.parse_intermixed_args(argv)
    try:
        path = reproduce(args.name, args.sweep_dir, args.out, args.overrides)
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path.read_text())
    print(f"[reproduce] {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
