"""The standard figures of a run or a sweep. Each function returns a matplotlib Figure
(save it with `analysis.style.save`); latencies come from `testbed.metrics`, so a figure
and the summary tables can never disagree on a definition."""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis import style
from analysis.run import Run
from testbed.metrics import REQUEST_TIME_COLUMNS, inter_token_latencies, latencies, stat_key

CDF_METRICS = (("ttft", "TTFT (s)"), ("tpot", "TPOT (s)"), ("itl", "inter-token latency (s)"),
               ("e2e", "end-to-end latency (s)"))
MAX_TIMESERIES_POINTS = 2000


def request_latencies(run: Run) -> dict[str, np.ndarray]:
    """Finished requests' TTFT, TPOT, E2E (and ITL when the run recorded token times)."""
    done = run.requests[run.requests["status"] == "finished"]
    values = latencies(*(done[c] for c in REQUEST_TIME_COLUMNS), done["n_output_tokens"])
    values["itl"] = (inter_token_latencies(run.tokens, done["request_id"])
                     if run.tokens is not None else np.array([]))
    return values


def latency_cdfs(runs: dict[str, Run], metrics=CDF_METRICS) -> Figure:
    """Empirical CDFs of each latency metric, one line per labelled run."""
    with style.styled():
        fig, axes = style.figure(2, (len(metrics) + 1) // 2)
        color = style.colors(runs)
        values = {label: request_latencies(run) for label, run in runs.items()}
        for ax, (metric, xlabel) in zip(axes, metrics):
            for label, v in values.items():
                _ecdf(ax, v[metric], label=label, color=color[label])
            ax.set(xlabel=xlabel, ylim=(0, 1.02),
                   ylabel="fraction of token gaps" if metric == "itl" else "fraction of requests")
            if not ax.lines:
                ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center")
            _log_if_wide(ax, np.concatenate([v[metric] for v in values.values()]))
        axes[0].legend(loc="lower right")
        for ax in axes[len(metrics):]:
            ax.set_visible(False)
    return fig


def latency_vs_rate(points: pd.DataFrame, labels: pd.Series) -> Figure:
    """Median and p99 TTFT / TPOT / E2E against the offered request rate, SLO limits as
    horizontal lines, and throughput with goodput: the throughput-latency curve of a sweep.
    `points` is a sweep table, `labels` its legend label per row (a policy)."""
    with style.styled():
        fig, axes = style.figure(2, 2)
        color = style.colors(labels)
        for label, group in points.groupby(labels, sort=True):
            g = group.sort_values("offered_rate_req_s")
            x, c = g["offered_rate_req_s"], color[label]
            for ax, metric in zip(axes, ("ttft", "tpot", "e2e")):
                ax.plot(x, g[stat_key(metric, "p99")], "o-", color=c, label=f"{label} p99")
                ax.plot(x, g[stat_key(metric, "median")], "s--", color=c, alpha=0.7,
                        label=f"{label} median")
            axes[3].plot(x, g["throughput_req_s"], "o-", color=c, label=f"{label} throughput")
            if g["goodput_req_s"].notna().any():
                axes[3].plot(x, g["goodput_req_s"], "^:", color=c, label=f"{label} goodput")
        for ax, metric, name in zip(axes, ("ttft", "tpot", "e2e"), ("TTFT", "TPOT", "E2E latency")):
            limit = points[f"slo_{metric}_s"].dropna()
            if len(limit):
                ax.axhline(limit.iloc[0], color="black", lw=1, ls=":", label="SLO")
            ax.set(xlabel="offered load (req/s)", ylabel=f"{name} (s)")
        axes[3].set(xlabel="offered load (req/s)", ylabel="completed (req/s)")
        axes[0].legend(fontsize=6)  # the latency panels share line styles
        axes[3].legend(fontsize=6)
    return fig


def timeseries(run: Run) -> Figure:
    """The run over time: queue, running batch, KV use, cumulative preemptions, tokens per step."""
    steps = _downsample(run.steps.sort_values("t_end"))
    t = steps["t_end"]
    capacity = steps["kv_blocks_used"] + steps["kv_blocks_free"]
    with style.styled():
        fig, axes = style.figure(5, 1, sharex=True)
        fig.set_size_inches(style.PANEL_INCHES[0] * 2, style.PANEL_INCHES[1] * 3)
        axes[0].plot(t, steps["n_waiting"], label="waiting")
        axes[0].plot(t, steps["n_swapped"], label="swapped")
        axes[0].set(ylabel="queued (requests)")
        axes[1].plot(t, steps["n_running"], label="running")
        axes[1].plot(t, steps["n_seqs"], label="scheduled this step", alpha=0.7)
        axes[1].set(ylabel="batch (sequences)")
        axes[2].plot(t, 100 * steps["kv_blocks_used"] / capacity)
        axes[2].set(ylabel="KV blocks used (%)", ylim=(0, 102))
        axes[3].plot(t, steps["n_preempted"].cumsum(), label="preempted")
        axes[3].plot(t, steps["n_swapped_out"].cumsum(), label="swapped out")
        axes[3].set(ylabel="cumulative (sequences)")
        axes[4].plot(t, steps["n_batched_tokens"], label="all")
        axes[4].plot(t, steps["n_prefill_tokens"], label="prefill", alpha=0.7)
        axes[4].set(ylabel="tokens per step", xlabel="run time (s)")
        for ax in (axes[0], axes[1], axes[3], axes[4]):
            ax.legend(loc="upper left", ncols=2)
    return fig


def step_time_vs_shape(run: Run) -> Figure:
    """Step seconds against batched tokens and against decode sequences, coloured by the
    share of prefill tokens in the step: what a cost model must explain."""
    steps = run.steps
    with np.errstate(divide="ignore", invalid="ignore"):
        share = (steps["n_prefill_tokens"] / steps["n_batched_tokens"]).fillna(0.0)
    with style.styled():
        fig, axes = style.figure(1, 2)
        for ax, column, xlabel in ((axes[0], "n_batched_tokens", "batched tokens per step"),
                                   (axes[1], "n_decode_seqs", "decode sequences per step")):
            points = ax.scatter(steps[column], steps["seconds"] * 1e3, c=share, cmap="viridis",
                                vmin=0, vmax=1, s=8, alpha=0.7, linewidths=0)
            ax.set(xlabel=xlabel, ylabel="step time (ms)")
        fig.colorbar(points, ax=axes, label="prefill share")
    return fig


def hit_rate_vs_capacity(points: pd.DataFrame, labels: pd.Series) -> Figure:
    """Prefix-cache hit rate against KV capacity, one line per (eviction) policy."""
    with style.styled():
        fig, axes = style.figure(1, 1)
        color = style.colors(labels)
        for label, group in points.groupby(labels, sort=True):
            g = group.sort_values("kv_capacity_blocks")
            axes[0].plot(g["kv_capacity_blocks"], 100 * g["prefix_hit_rate"], "o-",
                         color=color[label], label=label)
        axes[0].set(xlabel="KV cache capacity (blocks)", ylabel="prompt tokens hit (%)")
        axes[0].legend()
    return fig


COMPARED = (("throughput_req_s", "throughput"), ("ttft_median_s", "TTFT p50"),
            ("ttft_p99_s", "TTFT p99"), ("tpot_median_s", "TPOT p50"), ("tpot_p99_s", "TPOT p99"),
            ("e2e_median_s", "E2E p50"), ("e2e_p99_s", "E2E p99"))


def relative_errors(reference: dict, other: dict) -> dict[str, float]:
    """(other - reference) / reference for the compared summary metrics both runs have."""
    errors = {}
    for key, name in COMPARED:
        ref, val = reference.get(key), other.get(key)
        if ref is not None and val is not None and ref != 0:
            errors[name] = (val - ref) / ref
    return errors


def sim_vs_real(real: Run, sim: Run, real_label: str = "real", sim_label: str = "simulated") -> Figure:
    """Overlaid CDFs of two runs of one trace, and the simulator's relative error per metric."""
    with style.styled():
        fig, axes = style.figure(2, 2)
        values = {real_label: request_latencies(real), sim_label: request_latencies(sim)}
        color = {real_label: style.PALETTE[0], sim_label: style.PALETTE[1]}
        for ax, (metric, xlabel) in zip(axes, (CDF_METRICS[0], CDF_METRICS[1], CDF_METRICS[3])):
            for label, v in values.items():
                _ecdf(ax, v[metric], label=label, color=color[label])
            ax.set(xlabel=xlabel, ylabel="fraction of requests", ylim=(0, 1.02))
        axes[0].legend(loc="lower right")
        errors = relative_errors(real.summary, sim.summary)
        names = list(errors)
        axes[3].barh(names, [100 * errors[n] for n in names], color=style.PALETTE[1])
        axes[3].axvline(0, color="black", lw=0.8)
        axes[3].invert_yaxis()
        axes[3].set(xlabel=f"{sim_label} vs {real_label} (% error)")
    return fig


def _ecdf(ax, values, **kwargs) -> None:
    v = np.sort(np.asarray(values, dtype=float))
    v = v[~np.isnan(v)]
    if v.size:
        ax.step(v, np.arange(1, v.size + 1) / v.size, where="post", **kwargs)


def _log_if_wide(ax, values) -> None:
    """Log x axis when positive values span more than two decades."""
    v = np.asarray(values, dtype=float)
    v = v[v > 0]
    if v.size and v.max() / v.min() > 100:
        ax.set_xscale("log")


def _downsample(steps: pd.DataFrame) -> pd.DataFrame:
    """At most MAX_TIMESERIES_POINTS rows: per-bin means of levels, sums of counts."""
    if len(steps) <= MAX_TIMESERIES_POINTS:
        return steps
    bins = np.arange(len(steps)) * MAX_TIMESERIES_POINTS // len(steps)
    counts = ["n_preempted", "n_swapped_out"]
    levels = ["t_end", "n_waiting", "n_swapped", "n_running", "n_seqs", "kv_blocks_used",
              "kv_blocks_free", "n_batched_tokens", "n_prefill_tokens"]
    grouped = steps.groupby(bins)
    return pd.concat([grouped[levels].mean(), grouped[counts].sum()], axis=1)
