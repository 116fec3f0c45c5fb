"""Figures and tables that set a preset's sweep beside the paper it reproduces.

    python -m analysis.papers SWEEP_DIR [--out DIR]

A preset (`conf/experiment/<name>.yaml`) records `paper.preset` and its limits in every run's
config, so a sweep directory says which comparison it is. This writes `<name>_*.png|pdf`
figures and `comparison.md` (the headline table and the figures) into `--out` (default
`SWEEP_DIR/comparison`), plus `comparison.parquet`: one row per run, its summary and the
derived metrics of `analysis.paper_metrics`.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from analysis import paper_metrics as pm
from analysis import style
from analysis.report import Block, Heading, Image, Paragraph, to_markdown
from analysis.sweep import job_dirs, line_labels, load_sweep, policy_columns
from testbed.metrics import Table, format_number, stat_key

RATE = "offered_rate_req_s"


@dataclass(slots=True)
class PresetSweep:
    """A preset's sweep: one row per run (summary, derived metrics, `label`: its policy)."""

    name: str
    params: dict  # the preset's `paper` block
    config: dict  # the first run's resolved config
    runs: pd.DataFrame
    labels: list[str]  # policies in the preset's order

    def at_top_rate(self) -> pd.DataFrame:
        """Each policy's run at the highest offered rate of the sweep."""
        return self.runs.loc[self.runs.groupby("label")[RATE].idxmax()].set_index("label")


def load_preset_sweep(sweep_dir: str | Path) -> PresetSweep:
    """The sweep with per-run derived metrics; ValueError if it is not a preset's sweep."""
    sweep_dir = Path(sweep_dir)
    runs = load_sweep(sweep_dir)
    config = yaml.safe_load((job_dirs(sweep_dir)[0] / ".hydra" / "config.yaml").read_text())
    params = config.get("paper") or {}
    if params.get("preset") not in COMPARISONS:
        raise ValueError(f"{sweep_dir}: its runs were not made by a preset with a comparison "
                         f"(paper.preset is {params.get('preset')!r}; known: {', '.join(COMPARISONS)})")
    columns = policy_columns(runs) or ["policy"] * ("policy" in runs)
    label = runs[columns[0]].astype(str) if len(columns) == 1 else line_labels(runs, columns)
    block_size = int(config["cache"]["block_size"])
    derived = pd.DataFrame([_derived(Path(path), block_size) for path in runs["path"]], index=runs.index)
    runs = pd.concat([runs, derived, label.rename("label")], axis=1)
    order = [str(p) for p in config.get("policies") or {}]
    labels = [p for p in order if p in set(runs["label"])] + sorted(set(runs["label"]) - set(order))
    return PresetSweep(params["preset"], params, config, runs, labels)


def _derived(run_dir: Path, block_size: int) -> dict[str, float]:
    steps = pd.read_parquet(run_dir / "steps.parquet", columns=list(pm.STEP_COLUMNS))
    return {"mean_running": pm.mean_running(steps), "kv_waste": pm.kv_waste(steps, block_size),
            "kv_token_share": pm.token_share(steps, block_size)}


def write_comparison(sweep_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the preset's figures, comparison.md and comparison.parquet; returns the .md path."""
    sweep = load_preset_sweep(sweep_dir)
    out = Path(out) if out is not None else Path(sweep_dir) / "comparison"
    out.mkdir(parents=True, exist_ok=True)
    blocks = COMPARISONS[sweep.name](sweep, out)
    sweep.runs.drop(columns=["path"]).to_parquet(out / "comparison.parquet", index=False)
    md = out / "comparison.md"
    md.write_text(to_markdown(blocks, out))
    return md


# ---- the five comparisons ----------------------------------------------------------------

def vllm_paging(sweep: PresetSweep, out: Path) -> list[Block]:
    limit = float(sweep.params["norm_latency_limit_s"])
    caps = _capacities(sweep, {stat_key("norm_latency", "mean"): limit})
    paged = [label for label in sweep.labels if label.startswith("paged")]
    top = sweep.at_top_rate()
    rows = [(label, str(caps[label]), *(_ratio(caps[p], caps[label]) for p in paged),
             format_number(top.loc[label, "mean_running"]), _percent(top.loc[label, "kv_waste"]),
             _percent(top.loc[label, "kv_token_share"]), format_number(top.loc[label, "preemptions"]),
             format_number(top.loc[label, "swap_outs"]))
            for label in sweep.labels]
    table = Table(f"Capacity at mean normalized latency <= {limit:g} s/token and the gain of each "
                  f"paged policy over it; the rest at the top load ({top[RATE].max():.3g} req/s)",
                  ("policy", "capacity (req/s)", *(f"{p} gain" for p in paged), "mean batch (seqs)",
                   "KV waste", "KV holding tokens", "recomputed seqs", "blocks swapped out"),
                  tuple(rows))
    fig, axes = _panels(2, 2)
    _vs_rate(axes[0], sweep, stat_key("norm_latency", "mean"), "mean normalized latency (s/token)",
             limit=limit)
    axes[0].set_yscale("log")
    _vs_rate(axes[1], sweep, "mean_running", "running sequences (time average)")
    _vs_rate(axes[2], sweep, "kv_waste", "allocated KV holding no token (%)", scale=100)
    _vs_rate(axes[3], sweep, "throughput_req_s", "throughput (req/s)")
    return [Heading("vLLM paging: contiguous reservation vs paged KV", 1), table,
            *_save(fig, out, "vllm_paging", "Normalized latency, batch size, KV waste and "
                   "throughput against offered load; dotted line: the latency limit.")]


def sarathi_chunking(sweep: PresetSweep, out: Path) -> list[Block]:
    slos = {k: float(v) for k, v in sweep.params["tbt_p99_slo_s"].items()}
    queue = float(sweep.params["queue_median_limit_s"])
    caps = {name: _capacities(sweep, {stat_key("itl", "p99"): slo, stat_key("queue", "median"): queue})
            for name, slo in slos.items()}
    base = "vllm_nochunk"
    at = _common_rate(sweep, stat_key("queue", "median"), queue)
    ref = sweep.runs[np.isclose(sweep.runs[RATE], at)].set_index("label")
    rows = []
    for label in sweep.labels:
        cells = [label]
        for name in slos:
            cells += [str(caps[name][label]), _ratio(caps[name][label], caps[name][base])]
        cells += [format_number(ref.loc[label, stat_key("itl", "p99")]),
                  format_number(ref.loc[label, stat_key("ttft", "median")])]
        rows.append(tuple(cells))
    header = ["policy"]
    for name, slo in slos.items():
        header += [f"capacity, {name} ({slo:g} s)", f"vs {base}"]
    header += [f"p99 TBT (s) at {at:.3g} req/s", f"median TTFT (s) at {at:.3g} req/s"]
    table = Table(f"Capacity: highest load with p99 time between tokens within the SLO and median "
                  f"scheduling delay <= {queue:g} s", tuple(header), tuple(rows))
    fig, axes = _panels(2, 2)
    _vs_rate(axes[0], sweep, stat_key("itl", "p99"), "p99 time between tokens (s)")
    axes[0].set_yscale("log")
    for name, slo in slos.items():
        axes[0].axhline(slo, color="black", lw=0.8, ls=":")
        axes[0].annotate(f"{name} SLO", (1, slo), xycoords=("axes fraction", "data"), fontsize=7,
                         ha="right", va="bottom")
    _vs_rate(axes[1], sweep, stat_key("ttft", "median"), "median TTFT (s)")
    axes[1].set_yscale("log")
    _vs_rate(axes[2], sweep, stat_key("queue", "median"), "median scheduling delay (s)", limit=queue)
    axes[2].set_yscale("symlog", linthresh=1e-3)  # an idle server queues for 0 s
    _capacity_bars(axes[3], sweep, caps)
    return [Heading("Sarathi-Serve: chunked prefills and stall-free batching", 1), table,
            *_save(fig, out, "sarathi_chunking", "p99 time between tokens (dotted: strict and "
                   "relaxed SLOs), median TTFT and scheduling delay against offered load, and "
                   "the capacity each policy reaches under each SLO.")]


def orca_iteration(sweep: PresetSweep, out: Path) -> list[Block]:
    limit = float(sweep.params["norm_latency_limit_s"])
    caps = _capacities(sweep, {stat_key("norm_latency", "mean"): limit})
    top = sweep.at_top_rate()
    rows = [(label, str(caps[label]), _ratio(caps[label], caps["static"]),
             format_number(top.loc[label, "throughput_req_s"]),
             format_number(top.loc[label, "mean_running"]),
             format_number(top.loc[label, stat_key("e2e", "p99")]))
            for label in sweep.labels]
    table = Table(f"Capacity at mean normalized latency <= {limit:g} s/token; the rest at the top "
                  f"load ({top[RATE].max():.3g} req/s)",
                  ("batching", "capacity (req/s)", "vs static", "throughput (req/s)",
                   "mean batch (seqs)", "p99 E2E (s)"), tuple(rows))
    fig, axes = _panels(2, 2)
    _vs_rate(axes[0], sweep, stat_key("norm_latency", "mean"), "mean normalized latency (s/token)",
             limit=limit)
    axes[0].set_yscale("log")
    _vs_rate(axes[1], sweep, "throughput_req_s", "throughput (req/s)")
    _vs_rate(axes[2], sweep, stat_key("e2e", "p99"), "p99 E2E latency (s)")
    axes[2].set_yscale("log")
    _vs_rate(axes[3], sweep, "mean_running", "running sequences (time average)")
    return [Heading("Orca: iteration-level vs request-level batching", 1), table,
            *_save(fig, out, "orca_iteration", "Normalized latency (dotted: the limit), "
                   "throughput, p99 E2E latency and batch size against offered load.")]


def prefix_capacity(sweep: PresetSweep, out: Path) -> list[Block]:
    capacity = "engine.kv_memory_gb"
    runs = sweep.runs.sort_values(capacity)
    bound, repeated = _prefix_bounds(sweep)
    points = sorted(runs[capacity].unique())
    hits = runs.pivot_table(index="label", columns=capacity, values="prefix_hit_rate")
    rows = [(label, *(_percent(hits.loc[label, c]) for c in points)) for label in sweep.labels]
    rows.append(("infinite cache (bound)", *(_percent(bound) for _ in points)))
    table = Table(f"Prompt tokens served from the prefix cache, by KV capacity (GB); "
                  f"{100 * repeated:.1f}% of the trace's hash blocks repeat an earlier one",
                  ("policy", *(f"{c:g} GB" for c in points)), tuple(rows))
    ttft = runs.pivot_table(index="label", columns=capacity, values=stat_key("ttft", "mean"))
    ttft_rows = tuple((label, *(format_number(ttft.loc[label, c]) for c in points))
                      for label in sweep.labels)
    ttft_table = Table("Mean TTFT (s) by KV capacity (GB)", ("policy", *(f"{c:g} GB" for c in points)),
                       ttft_rows)
    fig, axes = _panels(1, 2)
    color = style.colors(sweep.labels)
    for label in sweep.labels:
        g = runs[runs["label"] == label]
        line = "s--" if label.startswith("radix") else "o-"  # a radix curve may lie on its prefix twin
        axes[0].plot(g[capacity], 100 * g["prefix_hit_rate"], line, color=color[label], label=label)
        axes[1].plot(g[capacity], g[stat_key("ttft", "mean")], line, color=color[label], label=label)
    axes[0].axhline(100 * bound, color="black", lw=1, ls=":", label="infinite cache")
    axes[0].set(xscale="log", xlabel="KV cache capacity (GB)", ylabel="prompt tokens hit (%)")
    axes[1].set(xscale="log", yscale="log", xlabel="KV cache capacity (GB)", ylabel="mean TTFT (s)")
    axes[0].legend(fontsize=6)
    return [Heading("Prefix-cache capacity on the Mooncake trace", 1), table, ttft_table,
            *_save(fig, out, "prefix_capacity", "Prefix-cache hit rate (dotted: the infinite-"
                   "cache bound) and mean TTFT against KV cache capacity; radix trees dashed.")]


def sjf_vs_fcfs(sweep: PresetSweep, out: Path) -> list[Block]:
    top = sweep.at_top_rate()
    metrics = ((stat_key("e2e", "mean"), "mean E2E (s)"), (stat_key("e2e", "p99"), "p99 E2E (s)"),
               (stat_key("ttft", "mean"), "mean TTFT (s)"), (stat_key("ttft", "p99"), "p99 TTFT (s)"),
               (stat_key("norm_latency", "mean"), "mean s/token"))
    rows = []
    for label in sweep.labels:
        cells = [label]
        for key, _ in metrics:
            value, fcfs = top.loc[label, key], top.loc["fcfs", key]
            cells.append(f"{format_number(value)} ({_ratio(fcfs, value)})")
        rows.append(tuple(cells))
    table = Table(f"At the top load ({top[RATE].max():.3g} req/s); in brackets FCFS / policy "
                  f"(above 1: the policy is faster)", ("policy", *(name for _, name in metrics)),
                  tuple(rows))
    fig, axes = _panels(2, 2)
    for ax, (key, name) in zip(axes, metrics[:4]):
        _vs_rate(ax, sweep, key, name)
        ax.set_yscale("log")
    return [Heading("Shortest job first and MLFQ vs FCFS", 1), table,
            *_save(fig, out, "sjf_vs_fcfs", "Mean and p99 E2E latency and TTFT against offered load.")]


COMPARISONS: dict[str, Callable[[PresetSweep, Path], list[Block]]] = {
    "vllm_paging": vllm_paging, "sarathi_chunking": sarathi_chunking,
    "orca_iteration": orca_iteration, "prefix_capacity": prefix_capacity,
    "sjf_vs_fcfs": sjf_vs_fcfs,
}


# ---- shared pieces -------------------------------------------------------------------------

def _capacities(sweep: PresetSweep, limits: dict[str, float]) -> dict[str, pm.Capacity]:
    runs = sweep.runs
    use = pm.usage(runs, limits)
    return {label: pm.capacity(runs.loc[runs["label"] == label, RATE], use[runs["label"] == label])
            for label in sweep.labels}


def _common_rate(sweep: PresetSweep, column: str, limit: float) -> float:
    """The highest swept rate at which every policy keeps `column` within `limit` (else the lowest)."""
    ok = sweep.runs[column].astype(float) <= limit
    rates = [r for r, g in sweep.runs.groupby(RATE) if ok[g.index].all()]
    return max(rates) if rates else float(sweep.runs[RATE].min())


def _prefix_bounds(sweep: PresetSweep) -> tuple[float, float]:
    """The infinite-cache hit share over the requests the runs admitted, and the share of the
    trace's hash blocks that repeat (every request)."""
    from experiments.replay import experiment_trace

    trace = experiment_trace(sweep.config)
    first = Path(sweep.runs["path"].iloc[0])
    statuses = pd.read_parquet(first / "requests.parquet", columns=["request_id", "status"])
    rejected = set(statuses.loc[statuses["status"] == "rejected", "request_id"])
    admitted = trace.df[~trace.df["request_id"].isin(rejected)]
    bound = pm.prefix_hit_bound(admitted["prompt_len"], admitted["block_hashes"],
                                trace.hash_block_size, int(sweep.config["cache"]["block_size"]))
    return bound, pm.repeated_block_share(trace.df["block_hashes"])


def _panels(nrows: int, ncols: int):
    with style.styled():
        return style.figure(nrows, ncols)


def _vs_rate(ax, sweep: PresetSweep, column: str, ylabel: str, *, scale: float = 1.0,
             limit: float | None = None) -> None:
    color = style.colors(sweep.labels)
    with style.styled():
        for label in sweep.labels:
            g = sweep.runs[sweep.runs["label"] == label].sort_values(RATE)
            ax.plot(g[RATE], scale * g[column].astype(float), "o-", color=color[label], label=label)
        if limit is not None:
            ax.axhline(limit * scale, color="black", lw=0.8, ls=":")
        ax.set(xlabel="offered load (req/s)", ylabel=ylabel)
        if ax.get_subplotspec().is_first_row() and ax.get_subplotspec().is_first_col():
            ax.legend(fontsize=6, loc="upper left")


def _capacity_bars(ax, sweep: PresetSweep, caps: dict[str, dict[str, pm.Capacity]]) -> None:
    color = style.colors(sweep.labels)
    width = 0.8 / len(sweep.labels)
    with style.styled():
        for i, label in enumerate(sweep.labels):
            x = np.arange(len(caps)) + (i - (len(sweep.labels) - 1) / 2) * width
            ax.bar(x, [caps[name][label].rate for name in caps], width, color=color[label], label=label)
        ax.set_xticks(np.arange(len(caps)), [f"{name} SLO" for name in caps])
        ax.set(ylabel="capacity (req/s)")


def _save(fig, out: Path, name: str, caption: str) -> list[Block]:
    png, _pdf = style.save(fig, out, name)
    return [Image(png.relative_to(out), caption)]


def _ratio(numerator: pm.Capacity | float, denominator: pm.Capacity | float) -> str:
    a = numerator.rate if isinstance(numerator, pm.Capacity) else float(numerator)
    b = denominator.rate if isinstance(denominator, pm.Capacity) else float(denominator)
    if not (np.isfinite(a) and np.isfinite(b)) or b <= 0:
        return "-"
    bounded = any(isinstance(c, pm.Capacity) and c.bound != "=" for c in (numerator, denominator))
    return f"{'~' if bounded else ''}{a / b:.2f}x"


def _percent(value) -> str:
    value = float(value)
    return "-" if not np.isfinite(value) else f"{100 * value:.1f}%"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.papers", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="a preset's multirun directory")
    parser.add_argument("--out", help="where figures and comparison.md go (default SWEEP_DIR/comparison)")
    args = parser.parse_args(argv)
    try:
        path = write_comparison(args.sweep_dir, args.out)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
