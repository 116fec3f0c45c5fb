"""Hydra callbacks: after a multirun, join every run's summary with its overrides into the
sweep's `results.parquet` (one row per run), ready for `analysis`."""
from __future__ import annotations

from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class SweepResults(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from analysis.sweep import load_sweep, write_results

        sweep_dir = Path(config.hydra.sweep.dir)
        results = load_sweep(sweep_dir)
        path = write_results(results, sweep_dir)
        print(f"[sweep] {len(results)} runs -> {path}")
