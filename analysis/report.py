"""`python -m analysis.report DIR [--compare OTHER_RUN]`: figures and a report of a run or a sweep.

Writes `DIR/figures/*.png|pdf`, `DIR/report.md` and a self-contained `DIR/report.html`
(figures embedded). Tables are formatted from the summary dicts by `testbed.metrics`, the
same code that prints them in the terminal. A run or sweep gets only the figures its data
supports: no sweep curves for a single run, no hit-rate curve without prefix-cache hits.
"""
from __future__ import annotations

import argparse
import base64
import html
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from analysis import figures, style
from analysis.run import Run, load_run
from analysis.sweep import (CAPACITY_WORDS, RATE_WORDS, axis_parameter, is_run_dir, line_labels,
                            load_sweep, policy_columns, varying, write_results)
from testbed.metrics import Table, format_number, stat_key, summary_tables


@dataclass(frozen=True, slots=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True, slots=True)
class Paragraph:
    text: str


@dataclass(frozen=True, slots=True)
class Image:
    png: Path  # relative to the report's directory
    caption: str


Block = Heading | Paragraph | Table | Image

SWEEP_COLUMNS = (("throughput_req_s", "req/s"), ("goodput_req_s", "goodput req/s"),
                 ("slo_attainment", "SLO att."), (stat_key("ttft", "median"), "TTFT p50 s"),
                 (stat_key("ttft", "p99"), "TTFT p99 s"), (stat_key("tpot", "median"), "TPOT p50 s"),
                 (stat_key("tpot", "p99"), "TPOT p99 s"), (stat_key("e2e", "p99"), "E2E p99 s"),
                 ("prefix_hit_rate", "prefix hit"), ("preemptions", "preempt."))


def write_report(directory: str | Path, *, compare: str | Path | None = None) -> Path:
    """Write the figures and report of a run or sweep directory; returns report.md's path."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory")
    out = directory / "figures"
    if is_run_dir(directory):
        blocks = run_report(load_run(directory), out, load_run(compare) if compare else None)
    else:
        if compare:
            raise ValueError("--compare takes two run directories, but "
                             f"{directory} is a sweep (it has no run.json)")
        blocks = sweep_report(directory, out)
    md = directory / "report.md"
    md.write_text(to_markdown(blocks, directory))
    (directory / "report.html").write_text(to_html(blocks, directory))
    return md


def run_report(run: Run, out: Path, compare: Run | None = None) -> list[Block]:
    blocks: list[Block] = [Heading(f"Run {run.name}", 1), Paragraph(_describe(run))]
    blocks += summary_tables(run.summary)
    if (run.requests["status"] == "finished").any():
        blocks += _figure(figures.latency_cdfs({run.label: run}), out, "latency_cdf",
                          "Latency distributions of finished requests.")
    if len(run.steps):
        blocks += _figure(figures.timeseries(run), out, "timeseries",
                          "Queue, batch, KV use, preemptions and tokens per step over the run.")
        blocks += _figure(figures.step_time_vs_shape(run), out, "step_time_vs_shape",
                          "Step time against batch shape, coloured by prefill share.")
    if compare is not None:
        ref, other = _engine_label(run), _engine_label(compare)
        if ref == other:
            ref, other = run.name, compare.name
        blocks += _figure(figures.sim_vs_real(run, compare, ref, other), out, "sim_vs_real",
                          f"{other} ({compare.path}) against {ref}: CDFs and relative errors.")
    return blocks


def sweep_report(sweep_dir: Path, out: Path) -> list[Block]:
    sweep = load_sweep(sweep_dir)
    results = write_results(sweep, sweep_dir)
    changing = varying(sweep)
    statuses = ", ".join(f"{n} {s}" for s, n in sweep["status"].value_counts().items())
    blocks: list[Block] = [
        Heading(f"Sweep {sweep_dir.name}", 1),
        Paragraph(f"{len(sweep)} runs ({statuses}); varying: {', '.join(changing) or 'nothing'}. "
                  f"All summaries: `{results.name}`."),
        _sweep_table(sweep, changing),
    ]
    runs: dict[str, Run] = {}

    def run_of(row) -> Run:
        if row["job"] not in runs:
            runs[row["job"]] = load_run(row["path"])
        return runs[row["job"]]

    rate = axis_parameter(sweep, RATE_WORDS)
    if rate:
        labels = line_labels(sweep, [c for c in changing if c != rate])
        blocks += _figure(figures.latency_vs_rate(sweep, labels), out, "latency_vs_rate",
                          f"Latency percentiles, throughput and goodput against offered load "
                          f"(swept through `{rate}`); dotted black lines are SLO limits.")
    capacity = axis_parameter(sweep, CAPACITY_WORDS)
    if capacity and (sweep["prefix_hit_tokens"].fillna(0) > 0).any():
        labels = line_labels(sweep, [c for c in changing if c != capacity])
        blocks += _figure(figures.hit_rate_vs_capacity(sweep, labels), out, "hit_rate_vs_capacity",
                          f"Prefix-cache hit rate against KV capacity (swept through `{capacity}`).")

    lines = policy_columns(sweep) or changing
    points = [c for c in changing if c not in lines]
    labels = line_labels(sweep, lines)
    for key, group in (sweep.groupby(points, sort=True) if points else [((), sweep)]):
        key = key if isinstance(key, tuple) else (key,)
        where = " ".join(f"{c}={v}" for c, v in zip(points, key))
        blocks += _figure(figures.latency_cdfs({labels[i]: run_of(row) for i, row in group.iterrows()}),
                          out, _slug("latency_cdf " + where),
                          f"Latency distributions by policy{' at ' + where if where else ''}.")

    for real_row, sim_row in _sim_real_pairs(sweep, changing):
        real, sim = run_of(real_row), run_of(sim_row)
        blocks += _figure(figures.sim_vs_real(real, sim, f"engine={real_row['engine']}", "engine=sim"),
                          out, _slug(f"sim_vs_real {real_row['job']} {sim_row['job']}"),
                          f"Simulator (job {sim_row['job']}) against the real engine "
                          f"(job {real_row['job']}) on the same settings.")
    return blocks


def _sweep_table(sweep: pd.DataFrame, changing: list[str]) -> Table:
    columns = [(c, c) for c in changing] + [(k, name) for k, name in SWEEP_COLUMNS if k in sweep]
    rows = tuple((str(row["job"]), str(row["status"]),
                  *(str(row[k]) if k in changing else format_number(_none_if_nan(row[k]))
                    for k, _ in columns))
                 for _, row in sweep.iterrows())
    return Table("Runs", ("job", "status", *(name for _, name in columns)), rows)


def _sim_real_pairs(sweep: pd.DataFrame, changing: list[str]):
    """(real, simulated) rows that differ only in the `engine` override."""
    if "engine" not in changing:
        return []
    others = [c for c in changing if c != "engine"]
    sims = sweep[sweep["engine"] == "sim"]
    pairs = []
    for _, real in sweep[sweep["engine"] != "sim"].iterrows():
        same = sims[(sims[others] == real[others]).all(axis=1)] if others else sims
        pairs += [(real, sim) for _, sim in same.iterrows()]
    return pairs


def _figure(fig, out: Path, name: str, caption: str) -> list[Block]:
    png, _pdf = style.save(fig, out, name)
    return [Image(png.relative_to(out.parent), caption)]


def _describe(run: Run) -> str:
    meta = run.meta
    parts = [f"status: {meta.get('status', 'unknown')}"]
    for key in ("engine", "model", "policies", "device", "start_time", "end_time"):
        if key in meta:
            value = meta[key]
            parts.append(f"{key}: {value if isinstance(value, str) else json.dumps(value)}")
    commit = (meta.get("versions") or {}).get("git_commit")
    if commit:
        parts.append(f"commit: {commit[:12]}")
    if run.overrides:
        parts.append("overrides: " + " ".join(f"{k}={v}" for k, v in run.overrides.items()))
    return "; ".join(parts) + "."


def _engine_label(run: Run) -> str:
    engine = run.config.get("engine")
    if isinstance(engine, dict) and "kind" in engine:
        return f"engine={engine['kind']}"
    if isinstance(run.meta.get("engine"), str):
        return f"engine={run.meta['engine']}"
    return run.label


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text.strip())


def _none_if_nan(value):
    return None if value is None or value != value else value


# ---- rendering ----

def to_markdown(blocks: list[Block], base: Path) -> str:
    out = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"{'#' * b.level} {b.text}")
        elif isinstance(b, Paragraph):
            out.append(b.text)
        elif isinstance(b, Table):
            out.append("\n".join([f"### {b.title}", "", _md_row(b.header),
                                  _md_row(["---"] * len(b.header)), *map(_md_row, b.rows)]))
        else:
            out.append(f"![{b.png.stem}]({b.png.as_posix()})\n\n*{b.caption}* "
                       f"(PDF: `{b.png.with_suffix('.pdf').as_posix()}`)")
    return "\n\n".join(out) + "\n"


def _md_row(cells) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


HTML_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{padding:2px 10px;border-bottom:1px solid #ddd}
td:not(:first-child){text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1em 0}img{max-width:100%}figcaption{color:#555;font-size:90%}"""


def to_html(blocks: list[Block], base: Path) -> str:
    title = next((b.text for b in blocks if isinstance(b, Heading)), "report")
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{HTML_STYLE}</style></head><body>"]
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{html.escape(b.text)}</h{b.level}>")
        elif isinstance(b, Paragraph):
            out.append(f"<p>{html.escape(b.text)}</p>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{html.escape(c)}</th>" for c in b.header)
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                           for row in b.rows)
            out.append(f"<h3>{html.escape(b.title)}</h3><table><tr>{head}</tr>{rows}</table>")
        else:
            data = base64.b64encode((base / b.png).read_bytes()).decode()
            out.append(f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(b.caption)}'>"
                       f"<figcaption>{html.escape(b.caption)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.splitlines()[0])
    parser.add_argument("directory", help="a run directory (with run.json) or a sweep of them")
    parser.add_argument("--compare", help="another run of the same trace (e.g. the simulator's) "
                                          "to overlay on a single run")
    args = parser.parse_args(argv)
    try:
        path = write_report(args.directory, compare=args.compare)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
