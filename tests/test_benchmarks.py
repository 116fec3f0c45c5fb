"""The throughput benchmark's rows: what the GPU comparison's JSON promises, on a tiny config."""
from __future__ import annotations

import json

from benchmarks import throughput


def test_throughput_rows_carry_samples_medians_and_ratios(tmp_path):
    out = tmp_path / "rows.json"
    rows = throughput.main(["--model", "qwen2-tiny", "--batch", "2", "--prompt-len", "8",
                            "--gen-len", "4", "--engines", "ours,mlx-lm", "--repeats", "3",
                            "--out", str(out)])
    assert json.loads(out.read_text()) == rows
    assert [r["engine"] for r in rows] == ["ours", "mlx-lm"]
    for row in rows:
        assert {"engine", "model", "batch", "prompt_len", "gen_len", "tok_per_s",
                "device"} <= row.keys()
        assert row["repeats"] == 3 and len(row["tok_per_s_samples"]) == 3
        samples = sorted(row["tok_per_s_samples"])
        assert row["tok_per_s"] == samples[1] > 0  # the median of three
    ours, peer = rows
    assert ours["ratio_vs_mlx_lm"] == round(ours["tok_per_s"] / peer["tok_per_s"], 3)
    assert "ratio_vs_mlx_lm" not in peer
