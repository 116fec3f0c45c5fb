"""Analysis of recorded runs: load runs and sweeps, draw the standard figures, write reports.

    from analysis import load_run, load_sweep
    run = load_run("outputs/2026-01-01/12-00-00")
    sweep = load_sweep("multirun/2026-01-01/12-00-00")

`python -m analysis.report DIR` writes the figures and a Markdown + HTML report.
"""
from analysis.run import Run, load_run
from analysis.sweep import load_sweep, write_results

__all__ = ["Run", "load_run", "load_sweep", "write_results"]
