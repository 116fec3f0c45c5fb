"""Broken trace files: every error names the file, the line (1-based, header included)
and the field, and is a TraceError (a ValueError)."""
import pandas as pd
import pytest

from testbed.traces import TraceError, load_trace

AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
GOOD_ROW = "2023-11-16 18:17:03.9799600,4808,10\n"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def expect_error(path, line, field, message, fmt="azure", **options):
    with pytest.raises(TraceError) as info:
        load_trace(fmt, path, **options)
    error = info.value
    assert isinstance(error, ValueError)
    assert (error.source, error.line, error.field) == (str(path), line, field)
    text = str(error)
    assert text.startswith(str(path)) and message in text
    if line is not None:
        assert f"line {line}" in text
    if field:
        assert f"field {field!r}" in text
    return text


def test_missing_column(tmp_path):
    path = write(tmp_path, "a.csv", "TIMESTAMP,ContextTokens\n2023-11-16 18:17:03,5\n")
    expect_error(path, 1, "GeneratedTokens", "missing column")


def test_missing_jsonl_key_everywhere_and_on_one_line(tmp_path):
    path = write(tmp_path, "m.jsonl", '{"timestamp": 0, "input_length": 5}\n')
    expect_error(path, 1, "output_length", "missing column", fmt="mooncake")
    path = write(tmp_path, "m2.jsonl", '{"timestamp": 0, "input_length": 5, "output_length": 1}\n'
                 '\n{"timestamp": 3, "input_length": 5}\n')
    expect_error(path, 3, "output_length", "missing value", fmt="mooncake")


@pytest.mark.parametrize("cell,message", [("12x", "'12x' is not a number"),
                                          ("", "missing value"),
                                          ("3.5", "'3.5' is not an integer")])
def test_bad_number(tmp_path, cell, message):
    path = write(tmp_path, "a.csv", AZURE_HEADER + GOOD_ROW * 3 + f"2023-11-16 18:17:04,{cell},10\n")
    expect_error(path, 5, "ContextTokens", message)


def test_bad_timestamp(tmp_path):
    path = write(tmp_path, "a.csv", AZURE_HEADER + GOOD_ROW + "yesterday,5,5\n")
    expect_error(path, 3, "TIMESTAMP", "'yesterday' is not a date-time")


@pytest.mark.parametrize("value", ["-3", "0"])
def test_negative_or_zero_length(tmp_path, value):
    path = write(tmp_path, "a.csv", AZURE_HEADER + GOOD_ROW + f"2023-11-16 18:17:05,7,{value}\n")
    expect_error(path, 3, "GeneratedTokens", f"must be a positive integer, got {value}")


def test_timestamps_going_backwards(tmp_path):
    path = write(tmp_path, "a.csv", AZURE_HEADER + GOOD_ROW + "2023-11-16 18:17:05,1,1\n"
                 "2023-11-16 18:17:04,1,1\n")
    expect_error(path, 4, "TIMESTAMP", "timestamp goes backwards")
    path = write(tmp_path, "m.jsonl", '{"timestamp": 10, "input_length": 5, "output_length": 1}\n'
                 '{"timestamp": 9, "input_length": 5, "output_length": 1}\n')
    expect_error(path, 2, "timestamp", "goes backwards", fmt="mooncake")


def test_empty_files(tmp_path):
    expect_error(write(tmp_path, "a.csv", ""), None, "", "empty file")
    expect_error(write(tmp_path, "b.csv", AZURE_HEADER), None, "", "a header but no requests")
    expect_error(write(tmp_path, "c.jsonl", "\n\n"), None, "", "empty file", fmt="mooncake")


def test_blank_lines_keep_line_numbers(tmp_path):
    path = write(tmp_path, "a.csv", AZURE_HEADER + GOOD_ROW + "\n\n" + "2023-11-16 18:17:05,x,1\n")
    expect_error(path, 5, "ContextTokens", "'x' is not a number")


def test_malformed_json_line(tmp_path):
    path = write(tmp_path, "m.jsonl", '{"timestamp": 0, "input_length": 5, "output_length": 1}\n'
                 '{"timestamp": 1, "input_length": 5, "output_length": 1\n')
    expect_error(path, 2, "", "malformed JSON", fmt="mooncake")
    path = write(tmp_path, "n.jsonl", "[1, 2]\n")
    expect_error(path, 1, "", "expected a JSON object", fmt="mooncake")


def test_malformed_csv_row(tmp_path):
    path = write(tmp_path, "a.csv", AZURE_HEADER + GOOD_ROW + "2023-11-16 18:17:05,1,1,9\n")
    expect_error(path, 3, "", "malformed CSV")


def test_block_hashes_must_cover_the_prompt(tmp_path):
    path = write(tmp_path, "m.jsonl",
                 '{"timestamp": 0, "input_length": 1024, "output_length": 1, "hash_ids": [1, 2]}\n'
                 '{"timestamp": 1, "input_length": 1025, "output_length": 1, "hash_ids": [1]}\n')
    expect_error(path, 2, "hash_ids", "1 block hashes for a prompt of 1025 tokens in blocks of 512",
                 fmt="mooncake")
    path = write(tmp_path, "n.jsonl",
                 '{"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": "abc"}\n')
    expect_error(path, 1, "hash_ids", "expected a list of integers", fmt="mooncake")


def test_duplicate_request_ids(tmp_path):
    path = write(tmp_path, "v.csv", "arrived_at,num_prefill_tokens,num_decode_tokens,request_id\n"
                 "0,1,1,a\n1,1,1,b\n2,1,1,a\n")
    expect_error(path, 4, "request_id", "duplicate request id 'a'", fmt="vidur")


def test_generic_errors_name_the_mapped_field(tmp_path):
    path = write(tmp_path, "g.csv", "ts,inp,out\n0,5,5\n1,5,-1\n")
    columns = {"arrival_s": "ts", "prompt_len": "inp", "output_len": "out"}
    expect_error(path, 3, "out", "positive integer", fmt="generic", columns=columns)
    path = write(tmp_path, "h.csv", "ts,inp,out,block_hashes\n0,5,5,[1\n")
    expect_error(path, 2, "block_hashes", "malformed JSON list", fmt="generic", columns=columns,
                 hash_block_size=4)
    with pytest.raises(TraceError, match="field 'inp': missing column"):
        load_trace("generic", write(tmp_path, "i.csv", "ts,out\n0,1\n"), columns=columns)


def test_generic_parquet_errors_name_rows(tmp_path):
    path = tmp_path / "p.parquet"
    pd.DataFrame({"arrival_s": [0.0, 1.0], "prompt_len": [3, 0], "output_len": [1, 1]}).to_parquet(path)
    with pytest.raises(TraceError, match=r"p.parquet, row 2, field 'prompt_len': length must be"):
        load_trace("generic", path)


def test_generic_rejects_unknown_file_types_and_columns(tmp_path):
    with pytest.raises(ValueError, match="unknown file type '.txt'"):
        load_trace("generic", write(tmp_path, "x.txt", "a"))
    with pytest.raises(ValueError, match=r"\['arrival'\] are not trace columns"):
        load_trace("generic", write(tmp_path, "x.csv", "a\n1\n"), columns={"arrival": "a"})
