"""Trace readers on the shipped traces and examples, checked against the raw files read
independently with the csv / json modules and the standard library's datetime."""
import csv
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from testbed.traces import SHIPPED, TraceError, load_trace
from testbed.traces.load import TRACES_DIR

AZURE = TRACES_DIR / "azure_llm_2023"
MOONCAKE = TRACES_DIR / "mooncake_fast25" / "synthetic_trace.jsonl"
EXAMPLES = TRACES_DIR / "examples"


def raw_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def raw_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def utc_seconds(text: str) -> float:
    t = datetime.fromisoformat(text)
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()


@pytest.mark.parametrize("name,file,count,rate,prompt_mean,output_mean", [
    ("azure_code", "AzureLLMInferenceTrace_code.csv", 8819, 2.57, 2048, 27.9),
    ("azure_conv", "AzureLLMInferenceTrace_conv.csv", 19366, 5.53, 1155, 211),
])
def test_azure_2023_matches_raw_file(name, file, count, rate, prompt_mean, output_mean):
    trace = load_trace(name)
    rows = raw_csv(AZURE / file)
    assert len(trace) == len(rows) == count
    t0 = utc_seconds(rows[0]["TIMESTAMP"])
    for i in (0, 1, len(rows) // 2, -1):
        got = trace.df.iloc[i]
        assert got.prompt_len == int(rows[i]["ContextTokens"])
        assert got.output_len == int(rows[i]["GeneratedTokens"])
        assert got.arrival_s == pytest.approx(utc_seconds(rows[i]["TIMESTAMP"]) - t0, abs=1e-6)
    assert 57 * 60 <= trace.duration_s <= 58.5 * 60
    stats = trace.stats()
    assert stats["rate_per_s"] == pytest.approx(rate, abs=0.01)
    assert stats["prompt_len_mean"] == pytest.approx(prompt_mean, rel=0.001)
    assert stats["output_len_mean"] == pytest.approx(output_mean, rel=0.002)
    assert trace.license == "CC-BY-4.0" and "Splitwise" in trace.citation


def test_azure_2023_keeps_seven_digit_fractions():
    trace = load_trace("azure_code")
    rows = raw_csv(AZURE / "AzureLLMInferenceTrace_code.csv")
    # 18:17:03.9799600 -> 18:17:04.0319600: 0.052 s, exact to the 100 ns of the format.
    assert rows[1]["TIMESTAMP"].endswith("04.0319600")
    assert trace.df["arrival_s"].iloc[1] == pytest.approx(0.052, abs=1e-9)


def test_mooncake_matches_raw_file():
    trace = load_trace("mooncake_synthetic")
    rows = raw_jsonl(MOONCAKE)
    assert len(trace) == len(rows) == 3993
    assert trace.hash_block_size == 512
    for i in (0, 1, 2000, -1):
        got = trace.df.iloc[i]
        assert got.arrival_s == pytest.approx(rows[i]["timestamp"] / 1000)
        assert got.prompt_len == rows[i]["input_length"]
        assert got.output_len == rows[i]["output_length"]
        assert list(got.block_hashes) == rows[i]["hash_ids"]
    assert trace.duration_s == pytest.approx(1022.025)
    hash_counts = trace.df["block_hashes"].map(len).to_numpy()
    assert (hash_counts == np.ceil(trace.df["prompt_len"] / 512)).all()
    stats = trace.stats()
    assert stats["rate_per_s"] == pytest.approx(3.91, abs=0.01)
    assert stats["prompt_len_mean"] == pytest.approx(15325, abs=1)
    assert stats["prompt_len_p50"] == 11587
    assert stats["output_len_mean"] == pytest.approx(149, abs=0.5)
    assert trace.license == "Apache-2.0" and "Mooncake" in trace.citation


def test_mooncake_repeated_blocks_as_readme_says():
    hashes = np.concatenate(load_trace("mooncake_synthetic").df["block_hashes"].to_list())
    repeated = 1 - len(np.unique(hashes)) / len(hashes)
    assert repeated == pytest.approx(0.640, abs=0.001)


def test_every_shipped_trace_loads_and_every_file_is_shipped():
    for name in SHIPPED:
        assert len(load_trace(name)) > 0
    shipped = {SHIPPED[n].path for n in SHIPPED}
    data = {str(p.relative_to(TRACES_DIR)) for p in TRACES_DIR.rglob("*")
            if p.suffix in (".csv", ".jsonl")}
    assert data == shipped


def test_azure_2024_zone_and_missing_fractions():
    path = EXAMPLES / "azure2024_example.csv"
    rows = raw_csv(path)
    assert any("." not in r["TIMESTAMP"] for r in rows) and all("+00:00" in r["TIMESTAMP"] for r in rows)
    trace = load_trace("azure", path)
    t0 = utc_seconds(rows[0]["TIMESTAMP"])
    expected = [utc_seconds(r["TIMESTAMP"]) - t0 for r in rows]
    np.testing.assert_allclose(trace.df["arrival_s"], expected, atol=1e-6)
    assert trace.df["prompt_len"].tolist() == [int(r["ContextTokens"]) for r in rows]


def test_azure_zoned_and_naive_times_agree(tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                    "2024-05-10 00:00:00,5,5\n2024-05-10 02:00:01.5+02:00,5,5\n")
    assert load_trace("azure", path).df["arrival_s"].tolist() == [0.0, 1.5]


def test_burstgpt_drops_failed_requests_explicitly(caplog):
    path = EXAMPLES / "burstgpt_example.csv"
    rows = raw_csv(path)
    ok = [r for r in rows if r["Response tokens"] != "0"]
    with pytest.raises(TraceError, match=r"line 3, field 'Response tokens'.*2 such rows"):
        load_trace("burstgpt", path)
    trace = load_trace("burstgpt", path, zero_output="drop")
    assert len(trace) == len(ok) == len(rows) - 2
    assert trace.df["prompt_len"].tolist() == [int(r["Request tokens"]) for r in ok]
    first = float(ok[0]["Timestamp"])
    assert trace.df["arrival_s"].tolist() == [float(r["Timestamp"]) - first for r in ok]
    assert any("dropped 2 of 10 rows" in n for n in trace.notes)
    assert "dropped 2" in caplog.text


def test_burstgpt_filters_by_model_and_log_type():
    path = EXAMPLES / "burstgpt_example.csv"
    rows = raw_csv(path)
    want = [r for r in rows if r["Model"] == "ChatGPT" and r["Log Type"] == "API log"]
    trace = load_trace("burstgpt", path, model="ChatGPT", log_type=["API log"])
    assert trace.df["output_len"].tolist() == [int(r["Response tokens"]) for r in want]
    both = load_trace("burstgpt", path, model=["ChatGPT", "GPT-4"], zero_output="drop")
    assert len(both) == 8
    with pytest.raises(TraceError, match=r"no rows with Model in \['GPT-5'\].*ChatGPT, GPT-4"):
        load_trace("burstgpt", path, model="GPT-5")


def test_burstgpt_session_ids(tmp_path):
    path = tmp_path / "b3.csv"
    path.write_text("Timestamp,Session ID,Model,Request tokens,Response tokens,Total tokens,"
                    "Log Type,Elapsed time\n1.5,s1,ChatGPT,10,5,15,Conversation log,0.3\n"
                    "2.0,s2,ChatGPT,12,6,18,Conversation log,0.4\n")
    trace = load_trace("burstgpt", path)
    assert trace.df["session_id"].tolist() == ["s1", "s2"]
    assert trace.df["arrival_s"].tolist() == [0.0, 0.5]


def test_bailian_seconds_blocks_and_sessions():
    path = EXAMPLES / "bailian_example.jsonl"
    rows = raw_jsonl(path)
    trace = load_trace("bailian", path)
    assert trace.hash_block_size == 16
    assert trace.df["request_id"].tolist() == [str(r["chat_id"]) for r in rows]
    assert trace.df["arrival_s"].tolist() == [r["timestamp"] - rows[0]["timestamp"] for r in rows]
    # Sessions by following parent_chat_id to the first turn, computed here independently.
    parent = {r["chat_id"]: r["parent_chat_id"] for r in rows}

    def root(chat):
        while parent.get(chat, -1) != -1:
            chat = parent[chat]
        return str(chat)
    assert trace.df["session_id"].tolist() == [root(r["chat_id"]) for r in rows]
    same_as_mooncake = load_trace("mooncake", path, hash_block_size=16, time_unit="s")
    pd.testing.assert_frame_equal(same_as_mooncake.df, trace.df)


def test_vidur_example():
    path = EXAMPLES / "vidur_example.csv"
    rows = raw_csv(path)
    trace = load_trace("example_vidur")
    assert trace.df["arrival_s"].tolist() == [float(r["arrived_at"]) for r in rows]
    assert trace.df["prompt_len"].tolist() == [int(r["num_prefill_tokens"]) for r in rows]
    assert trace.df["output_len"].tolist() == [int(r["num_decode_tokens"]) for r in rows]


def test_generic_example_with_column_mapping():
    rows = raw_csv(EXAMPLES / "generic_example.csv")
    trace = load_trace("example_generic")
    assert trace.df["request_id"].tolist() == [r["request_id"] for r in rows]
    assert trace.df["arrival_s"].tolist() == [int(r["t_ms"]) / 1000 for r in rows]
    assert [list(h) for h in trace.df["block_hashes"]] == [json.loads(r["block_hashes"]) for r in rows]
    assert trace.df["priority"].tolist() == [int(r["priority"]) for r in rows]
    assert trace.df["session_id"].tolist() == [r["session_id"] for r in rows]
    assert trace.hash_block_size == 4


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".csv"])
def test_generic_formats_round_trip(tmp_path, suffix):
    frame = pd.DataFrame({"id": ["a", "b", "c"], "ts": [1_000_000, 1_500_000, 4_000_000],
                          "inp": [3, 4, 5], "out": [7, 8, 9], "prompt_text": ["x", "y z", "w"],
                          "prompt_token_ids": [[1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11, 12]]})
    path = tmp_path / f"t{suffix}"
    if suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.assign(prompt_token_ids=frame["prompt_token_ids"].map(json.dumps)).to_csv(path, index=False)
    columns = {"request_id": "id", "arrival_s": "ts", "prompt_len": "inp", "output_len": "out"}
    trace = load_trace("generic", path, columns=columns, time_unit="us")
    assert trace.df["arrival_s"].tolist() == [0.0, 0.5, 3.0]
    assert trace.df["request_id"].tolist() == ["a", "b", "c"]
    assert trace.df["prompt_text"].tolist() == ["x", "y z", "w"]
    assert [list(t) for t in trace.df["prompt_token_ids"]] == frame["prompt_token_ids"].tolist()
    requests = trace.to_requests()
    assert requests[1].prompt_token_ids == [4, 5, 6, 7] and requests[1].prompt_text == "y z"


def test_generic_datetimes_and_parquet_directory(tmp_path):
    parts = tmp_path / "parts.parquet"
    parts.mkdir()
    pd.DataFrame({"arrival_s": ["2024-01-01T00:00:00Z", "2024-01-01T00:00:02.25Z"],
                  "prompt_len": [1, 2], "output_len": [3, 4]}).to_parquet(parts / "part-0.parquet")
    pd.DataFrame({"arrival_s": ["2024-01-01T00:01:00Z"], "prompt_len": [5],
                  "output_len": [6]}).to_parquet(parts / "part-1.parquet")
    trace = load_trace("generic", parts, time_unit="datetime")
    assert trace.df["arrival_s"].tolist() == [0.0, 2.25, 60.0]


def test_load_trace_rejects_unknown_names_and_options():
    with pytest.raises(ValueError, match="not a shipped trace.*azure_conv"):
        load_trace("azure_conversation")
    with pytest.raises(ValueError, match="unknown trace format 'csv'; choose one of: azure"):
        load_trace("csv", EXAMPLES / "vidur_example.csv")
    with pytest.raises(ValueError, match=r"takes no option.*'zero_output'.*: hash_block_size, time_unit"):
        load_trace("mooncake_synthetic", zero_output="drop")
    with pytest.raises(ValueError, match="takes no option.*its options: none"):
        load_trace("azure_code", time_unit="s")
    with pytest.raises(ValueError, match="time_unit 'h'"):
        load_trace("generic", EXAMPLES / "vidur_example.csv", time_unit="h")

