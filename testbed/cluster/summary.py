"""Per-replica summaries of a cluster run, from its logs (the `replica` columns)."""
from __future__ import annotations

import pandas as pd

from testbed.metrics import SLO, format_number, summarize

REPLICA_COLUMNS = (("role", "role"), ("requests", "n_requests"), ("steps", "n_steps"),
                   ("busy", "busy_frac"), ("batch", "batch_mean_seqs"),
                   ("hit rate", "prefix_hit_rate"), ("TTFT p50", "ttft_median_s"),
                   ("TPOT p50", "tpot_median_s"), ("E2E p50", "e2e_median_s"))


def replica_summaries(requests: pd.DataFrame, steps: pd.DataFrame, roles: list[str],
                      slo: SLO | None = None) -> list[dict]:
    """One `summarize` per replica over its steps and the requests it served (a prefill
    replica: those whose prompt it computed), plus its role and busy time: the sum of its
    step times and that sum's fraction of the whole run's span."""
    span = _span(requests, steps)
    out = []
    for index, role in enumerate(roles):
        column = "prefill_replica" if role == "prefill" else "replica"
        own = steps[steps["replica"] == index]
        s = summarize(requests[requests[column] == index], own, None, slo)
        busy = float(own["seconds"].sum())
        out.append({"replica": index, "role": role, "busy_s": busy,
                    "busy_frac": busy / span if span > 0 else None, **s})
    return out


def _span(requests: pd.DataFrame, steps: pd.DataFrame) -> float:
    if requests.empty or steps.empty:
        return 0.0
    return float(steps["t_end"].max() - requests["arrival_s"].min())


def format_replicas(summaries: list[dict]) -> str:
    header = ("replica", *(label for label, _ in REPLICA_COLUMNS))
    rows = [(str(s["replica"]), *(s[k] if k == "role" else format_number(s.get(k))
                                  for _, k in REPLICA_COLUMNS)) for s in summaries]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    lines = ["Replicas"]
    for row in (header, *rows):
        lines.append("  " + "  ".join(c.rjust(w) for c, w in zip(row, widths)))
    return "\n".join(lines)
