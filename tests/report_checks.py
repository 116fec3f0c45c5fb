"""Checks on written reports that read the files directly, independently of testbed.metrics."""
import re
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd


def read_tables(run: Path):
    requests = pd.read_parquet(run / "requests.parquet")
    steps = pd.read_parquet(run / "steps.parquet")
    tokens = pd.read_parquet(run / "tokens.parquet") if (run / "tokens.parquet").exists() else None
    return requests, steps, tokens


def recomputed(run: Path) -> dict[str, float]:
    """A few summary numbers straight from the Parquet files, with numpy."""
    requests, steps, tokens = read_tables(run)
    done = requests[requests["status"] == "finished"]
    ttft = (done["first_token_s"] - done["arrival_s"]).to_numpy()
    multi = done[done["n_output_tokens"] > 1]
    tpot = ((multi["finish_s"] - multi["first_token_s"]) / (multi["n_output_tokens"] - 1)).to_numpy()
    e2e = (done["finish_s"] - done["arrival_s"]).to_numpy()
    duration = done["finish_s"].max() - requests["arrival_s"].min()
    out = {
        "requests": len(requests), "finished": len(done),
        "rejected": int((requests["status"] == "rejected").sum()),
        "duration (s)": duration,
        "throughput (req/s)": len(done) / duration,
        "output throughput (tok/s)": done["n_output_tokens"].sum() / duration,
        "steps": len(steps), "mean step time (s)": steps["seconds"].mean(),
        "preemptions": int(steps["n_preempted"].sum()),
        "KV used, peak (fraction)": (steps["kv_blocks_used"]
                                     / (steps["kv_blocks_used"] + steps["kv_blocks_free"])).max(),
    }
    for name, values in (("TTFT (s)", ttft), ("TPOT (s)", tpot), ("E2E (s)", e2e)):
        out[name] = [values.mean(), *np.percentile(values, [50, 90, 99])]
    if tokens is not None:
        gaps = []
        for _, g in tokens[tokens["request_id"].isin(done["request_id"])].groupby("request_id"):
            gaps += list(np.diff(g.sort_values("index")["t"].to_numpy()))
        out["ITL (s)"] = [np.mean(gaps), *np.percentile(gaps, [50, 90, 99])]
    return out


def markdown_tables(md: str) -> dict[str, dict[str, list[str]]]:
    """{table title: {first cell: other cells}} from '### title' + pipe tables."""
    tables = {}
    for title, body in re.findall(r"### (.+)\n\n((?:\|.*\|\n?)+)", md):
        rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in body.splitlines()]
        tables[title] = {r[0]: r[1:] for r in rows[2:]}
    return tables


def assert_valid_figure(figures: Path, name: str) -> None:
    png, pdf = figures / f"{name}.png", figures / f"{name}.pdf"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    image = matplotlib.image.imread(png)
    assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0  # not blank
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF") and len(data) > 1000, pdf


def figure_names(figures: Path) -> set[str]:
    return {p.stem for p in figures.glob("*.png")}
