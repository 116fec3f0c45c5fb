"""The OpenAI-compatible server end to end, in process on 127.0.0.1 (a free port), driven by
the official `openai` client and raw HTTP. Outputs are checked against `testbed.generate`
(one request alone, contiguous KV cache), token counts against the tokenizer, metrics with
prometheus_client's parser, and the recorded trace by replaying it."""
from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import openai
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from testbed.generate import generate
from testbed.model.qwen2 import Qwen2Model
from testbed.request import SamplingParams
from testbed.server import Server, serve_config
from testbed.stack import build_stack
from testbed.tokenizer import byte_level_tokenizer
from testbed.traces import load_trace
from testbed.weights import load_model

CONTEXT = 512
OVERRIDES = [f"scheduler.max_model_len={CONTEXT}", "engine.kv_memory_gb=0.01",
             "engine.host_kv_memory_gb=0"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen2 saved by transformers, with a byte-level tokenizer beside it:
    random weights that still give varied continuations, unlike repeating dummy ones."""
    from tests.tiny_qwen2 import build_tiny_qwen2

    directory = tmp_path_factory.mktemp("tiny-qwen2")
    build_tiny_qwen2(directory, tie=False)
    tokenizer = byte_level_tokenizer(500)
    tokenizer.backend.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": tokenizer.special_tokens["eos_token"],
         "chat_template": tokenizer.chat_template}))
    return directory


@pytest.fixture(scope="module")
def model(model_dir) -> str:
    return str(model_dir)


@pytest.fixture(scope="module")
def server(model):
    with Server(serve_config(model, OVERRIDES), port=0) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def reference(model):
    """`generate` on the same weights: the continuation of a prompt, run alone."""
    loaded = load_model(model)
    qwen2 = Qwen2Model(loaded.config, loaded.weights)

    def run(prompt: str, max_tokens: int, stop=(), chat=False, eos=None, **sampling):
        tok = loaded.tokenizer
        if chat:
            prompt = tok.apply_chat_template([{"role": "user", "content": prompt}])
        out = generate(qwen2, [tok.encode(prompt)], SamplingParams(**sampling),
                       max_tokens=max_tokens, eos_token_ids=eos or loaded.eos_token_ids,
                       stop=stop, tokenizer=tok)
        return out.completions[0]

    run.tokenizer = loaded.tokenizer
    return run


def raw_post(server, path: str, body: bytes | dict, headers=None) -> tuple[int, dict]:
    url = urlsplit(server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", path, body=data, headers={"Content-Type": "application/json",
                                                   **(headers or {})})
    resp = conn.getresponse()
    payload = json.loads(resp.read())
    conn.close()
    return resp.status, payload


def get(server, path: str) -> tuple[int, str]:
    url = urlsplit(server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.request("GET", path)
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    return resp.status, text


def metrics(server) -> dict[str, float]:
    """Every unlabelled-by-bucket sample of /metrics, by name."""
    status, text = get(server, "/metrics")
    assert status == 200
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if "le" not in s.labels}


def wait_for(condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


# ---- what it serves -------------------------------------------------------------------------

def test_models_and_health(server, client, model):
    assert [m.id for m in client.models.list().data] == [model]
    assert get(server, "/health") == (200, json.dumps({"status": "ok"}))


def test_greedy_completion_equals_generate(client, model, reference):
    expected = reference("Go", 12)
    assert len(set(expected.token_ids)) > 4  # a varied continuation, not one token repeated
    out = client.completions.create(model=model, prompt="Go", max_tokens=12)
    assert out.choices[0].text == expected.text
    assert out.choices[0].finish_reason == "length"
    prompt_tokens = len(reference.tokenizer.encode("Go"))
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == \
        (prompt_tokens, 12, prompt_tokens + 12)


def test_streamed_completion_equals_generate_with_usage_last(client, model, reference):
    expected = reference("Streams of", 10)
    chunks = list(client.completions.create(model=model, prompt="Streams of", max_tokens=10,
                                            stream=True, stream_options={"include_usage": True}))
    token_chunks = [c for c in chunks if c.choices]
    assert len(token_chunks) == 10  # one chunk per generated token
    assert "".join(c.choices[0].text for c in token_chunks) == expected.text
    assert [c.choices[0].finish_reason for c in token_chunks] == [None] * 9 + ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    assert chunks[-1].usage.prompt_tokens == len(reference.tokenizer.encode("Streams of"))
    assert all(c.usage is None for c in token_chunks)


def test_token_id_prompt_equals_text_prompt(client, model, reference):
    ids = reference.tokenizer.encode("Same words")
    by_ids = client.completions.create(model=model, prompt=ids, max_tokens=6)
    assert by_ids.choices[0].text == reference("Same words", 6).text
    assert by_ids.usage.prompt_tokens == len(ids)


def test_chat_uses_the_template_streamed_and_not(client, model, reference):
    expected = reference("How are you?", 8, chat=True)
    messages = [{"role": "user", "content": "How are you?"}]
    out = client.chat.completions.create(model=model, messages=messages, max_tokens=8)
    assert out.choices[0].message.content == expected.text
    assert out.choices[0].message.role == "assistant"
    template = reference.tokenizer.apply_chat_template(messages)
    assert out.usage.prompt_tokens == len(reference.tokenizer.encode(template))
    chunks = list(client.chat.completions.create(model=model, messages=messages, max_tokens=8,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected.text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_seeded_sampling_equals_generate_and_repeats(client, model, reference):
    params = dict(temperature=0.9, top_p=0.95, top_k=50)

    def served(seed):
        return client.completions.create(
            model=model, prompt="Random", max_tokens=10, seed=seed, temperature=0.9,
            top_p=0.95, extra_body={"top_k": 50}).choices[0].text

    expected = reference("Random", 10, seed=11, **params).text
    assert served(11) == served(11) == expected
    assert served(12) == reference("Random", 10, seed=12, **params).text != expected


def first_clean_window(text: str, start: int, size: int) -> str:
    """A substring of `text` from `start` on without replacement characters (held-back bytes)."""
    for i in range(start, len(text) - size):
        if "\ufffd" not in text[i:i + size]:
            return text[i:i + size]
    raise AssertionError(f"no clean window in {text!r}")


def test_stop_string_cuts_the_text_and_finishes_with_stop(server, client, model, reference):
    stop = first_clean_window(reference("Go", 24).text, 3, 3)
    expected = reference("Go", 24, stop=[stop])
    assert expected.finish_reason == "stop" and stop not in expected.text and expected.text
    before = metrics(server)
    out = client.completions.create(model=model, prompt="Go", max_tokens=24, stop=stop)
    assert out.choices[0].text == expected.text
    assert out.choices[0].finish_reason == "stop"
    assert out.usage.completion_tokens == len(expected.token_ids)
    streamed = list(client.completions.create(model=model, prompt="Go", max_tokens=24,
                                              stop=[stop, "never"], stream=True))
    assert "".join(c.choices[0].text for c in streamed) == expected.text
    assert streamed[-1].choices[0].finish_reason == "stop"
    assert wait_for(lambda: metrics(server)["testbed_requests_finished_total"]
                    == before["testbed_requests_finished_total"] + 2)
    after = metrics(server)
    assert after["testbed_requests_aborted_total"] == before["testbed_requests_aborted_total"]
    assert after["testbed_kv_blocks_used"] == 0


def test_an_end_of_sequence_token_finishes_with_stop(model, reference):
    """Serve with one of the greedy continuation's own tokens as EOS: generation stops there
    (the EOS token counted, not shown), unless `ignore_eos`."""
    greedy = reference("Go", 8).token_ids
    eos = greedy[4]
    expected = reference("Go", 8, eos=(eos,))

    def build(cfg):
        stack = build_stack(cfg)
        stack.eos_token_ids = (eos,)
        return stack

    with Server(serve_config(model, OVERRIDES), port=0, build=build) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        out = client.completions.create(model=model, prompt="Go", max_tokens=8)
        assert out.choices[0].finish_reason == expected.finish_reason == "stop"
        assert out.choices[0].text == expected.text
        assert out.usage.completion_tokens == greedy.index(eos) + 1
        ignored = client.completions.create(model=model, prompt="Go", max_tokens=8,
                                            extra_body={"ignore_eos": True})
        assert ignored.choices[0].finish_reason == "length"
        assert ignored.choices[0].text == reference("Go", 8, eos=(eos,), ignore_eos=True).text


def test_default_max_tokens_fills_the_context(client, model, reference):
    prompt = "x" * (CONTEXT - 4)
    out = client.completions.create(model=model, prompt=prompt)
    expected = reference(prompt, 4)
    assert out.choices[0].text == expected.text
    assert out.usage.completion_tokens == len(expected.token_ids)
    assert out.choices[0].finish_reason == expected.finish_reason


def test_metrics_count_tokens_requests_and_latencies(server, client, model):
    before = metrics(server)
    out = client.completions.create(model=model, prompt="Count me", max_tokens=5)
    assert wait_for(lambda: metrics(server)["testbed_requests_finished_total"]
                    == before["testbed_requests_finished_total"] + 1)
    after = metrics(server)

    def delta(name):
        return after[name] - before[name]

    assert delta("testbed_prompt_tokens_total") == out.usage.prompt_tokens
    assert delta("testbed_generation_tokens_total") == 5
    assert delta("testbed_time_to_first_token_seconds_count") == 1
    assert delta("testbed_time_per_output_token_seconds_count") == 1
    assert delta("testbed_time_to_first_token_seconds_sum") > 0
    assert after["testbed_num_requests_running"] == 0
    assert after["testbed_num_requests_waiting"] == 0
    assert after["testbed_kv_blocks_used"] == 0
    assert after["testbed_kv_usage_fraction"] == 0


# ---- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("body, param", [
    (b"{not json", None),
    ({"model": "gpt-4", "prompt": "Hi"}, "model"),
    ({"prompt": "Hi", "max_tokens": -5}, "max_tokens"),
    ({"prompt": "Hi", "max_tokens": 10**7}, "max_tokens"),
    ({"prompt": "y" * (CONTEXT + 10)}, "prompt"),
    ({"prompt": "Hi", "temperature": 9}, "temperature"),
    ({"prompt": "Hi", "top_p": 0}, "top_p"),
    ({}, "prompt"),
])
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, client, model,
                                                                     body, param):
    before = metrics(server)["testbed_invalid_requests_total"]
    if isinstance(body, dict):
        body = {"model": model, **body}
    code, payload = raw_post(server, "/v1/completions", body)
    assert code == 400
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]
    assert metrics(server)["testbed_invalid_requests_total"] == before + 1
    still = client.completions.create(model=model, prompt="Still", max_tokens=2)
    assert still.usage.completion_tokens == 2


def test_openai_client_raises_bad_request(client, model):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=model, messages=[], max_tokens=2)
    assert info.value.body["param"] == "messages"


def test_unknown_paths_and_methods(server):
    status, payload = raw_post(server, "/v1/embeddings", {"input": "x"})
    assert status == 404 and payload["error"]["code"] == "unknown_url"
    assert get(server, "/nothing")[0] == 404
    status, text = get(server, "/v1/completions")
    assert status == 405 and json.loads(text)["error"]["code"] == "method_not_allowed"


def test_missing_content_length_is_refused(server):
    url = urlsplit(server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.putrequest("POST", "/v1/completions")
    conn.putheader("Content-Type", "application/json")
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 411 and json.loads(resp.read())["error"]["code"] == "length_required"
    conn.close()


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_aborts_and_frees_kv(server, model, stream):
    before = metrics(server)
    body = {"model": model, "prompt": "Long " * 10, "max_tokens": 400, "ignore_eos": True,
            "stream": stream}
    url = urlsplit(server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.request("POST", "/v1/completions", body=json.dumps(body).encode(),
                 headers={"Content-Type": "application/json"})
    if stream:
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.readline().startswith(b"data: ")  # a token arrived: the request runs
    else:
        assert wait_for(lambda: metrics(server)["testbed_num_requests_running"] == 1)
    conn.sock.close()
    conn.close()

    def aborted_and_freed():
        m = metrics(server)
        return (m["testbed_requests_aborted_total"] == before["testbed_requests_aborted_total"] + 1
                and m["testbed_num_requests_running"] == 0 and m["testbed_kv_blocks_used"] == 0)

    assert wait_for(aborted_and_freed)
    after = metrics(server)
    assert after["testbed_requests_finished_total"] == before["testbed_requests_finished_total"]
    assert after["testbed_generation_tokens_total"] - before["testbed_generation_tokens_total"] < 400


def test_a_burst_of_new_connections_is_served(server, model):
    """Many clients connecting at once all get answers (none reset by a short listen queue)."""
    errors, done = [], []

    def one():
        try:
            status, payload = raw_post(server, "/v1/completions",
                                       {"model": model, "prompt": "hi", "max_tokens": 1})
            done.append((status, payload["usage"]["completion_tokens"]))
        except OSError as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=one) for _ in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == [] and done == [(200, 1)] * 100


# ---- concurrency, recording and replay -------------------------------------------------------

def test_concurrent_clients_and_the_recording_replays(tmp_path, model, reference):
    from experiments.replay import run_experiment
    from hydra import compose, initialize_config_dir

    from testbed.server.app import CONF_DIR

    record = tmp_path / "rec"
    prompts = [f"client {i} says " + "ab" * (i % 7) for i in range(32)]
    lengths = [3 + i % 6 for i in range(32)]
    with Server(serve_config(model, OVERRIDES), port=0, record_dir=record,
                record_text=True) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        outputs: dict[int, tuple[str, int]] = {}

        def one(i):
            chunks = list(client.completions.create(
                model=model, prompt=prompts[i], max_tokens=lengths[i], stream=True,
                stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
            outputs[i] = ("".join(c.choices[0].text for c in chunks if c.choices),
                          chunks[-1].usage.completion_tokens)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        chat = client.chat.completions.create(model=model, max_tokens=2,
                                              messages=[{"role": "user", "content": "Hi"}])
        assert chat.usage.completion_tokens == 2

    assert sorted(outputs) == list(range(32))
    for i in (0, 13, 31):
        assert outputs[i][0] == reference(prompts[i], lengths[i], ignore_eos=True).text
    assert [outputs[i][1] for i in range(32)] == lengths

    meta = json.loads((record / "run.json").read_text())
    assert meta["status"] == "complete" and meta["trace"]["rows"] == 33
    served = pd.read_parquet(record / "requests.parquet")
    assert len(served) == 33 and (served["status"] == "finished").all()
    assert len(pd.read_parquet(record / "steps.parquet")) > 0
    trace = load_trace("generic", record / "trace.jsonl")
    assert len(trace) == 33 and (trace.df["arrival_s"].diff().dropna() >= 0).all()
    texts = trace.df["prompt_text"].tolist()
    assert sorted(texts[:-1]) == sorted(prompts) and texts[-1] == "user: Hi\nassistant: "
    ids = dict(zip(trace.df["prompt_text"], trace.df["prompt_token_ids"]))
    assert list(ids[prompts[5]]) == reference.tokenizer.encode(prompts[5])
    assert dict(zip(trace.df["prompt_text"], trace.df["output_len"]))[prompts[5]] == lengths[5]

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose("config", overrides=[
            "engine=sim", "model=qwen2-tiny", "trace=recorded",
            f"trace.path={record / 'trace.jsonl'}", "progress=false", "report=false"])
    run_experiment(cfg, tmp_path / "replay")
    replayed = pd.read_parquet(tmp_path / "replay" / "requests.parquet").set_index("request_id")
    served = served.set_index("request_id")
    assert sorted(replayed.index) == sorted(served.index)
    assert (replayed["status"] == "finished").all()
    assert (replayed["n_output_tokens"] == served.loc[replayed.index, "n_output_tokens"]).all()
    assert (replayed["prompt_len"] == served.loc[replayed.index, "prompt_len"]).all()


def test_serve_command_records_and_stops_on_ctrl_c(tmp_path, model):
    record = tmp_path / "rec"
    cmd = [sys.executable, "-m", "testbed", "serve", "--model", model, "--port", "0",
           "--served-model-name", "tiny", "--record", str(record), *OVERRIDES]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1],
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"serving tiny (context {CONTEXT} tokens) at http://127.0.0.1:"), \
            line + proc.stderr.read()
        base = line.split(" at ")[1].strip()
        client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0)
        out = client.completions.create(model="tiny", prompt="From the CLI", max_tokens=4)
        assert out.usage.completion_tokens == 4
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "stopped" in stdout
    assert json.loads((record / "run.json").read_text())["status"] == "complete"
    rows = [json.loads(line) for line in (record / "trace.jsonl").read_text().splitlines()]
    assert [(r["prompt_len"], r["output_len"]) for r in rows] == [(out.usage.prompt_tokens, 4)]


def test_serve_command_rejects_bad_overrides(capsys):
    from testbed.__main__ import main

    assert main(["serve", "--model", "dummy:qwen2-tiny", "no_such_group=x"]) == 2
    assert "error" in capsys.readouterr().err
    assert main(["serve", "--model", "dummy:qwen2-tiny", "engine=sim"]) == 2
    assert "engine.kind must be mlx" in capsys.readouterr().err


def test_overlapped_engine_serves_the_same_text(model, reference):
    stop = first_clean_window(reference("Go", 16).text, 3, 3)
    with Server(serve_config(model, [*OVERRIDES, "engine.overlap=true"]), port=0) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        out = client.completions.create(model=model, prompt="Go", max_tokens=16)
        assert out.choices[0].text == reference("Go", 16).text
        stopped = client.completions.create(model=model, prompt="Go", max_tokens=16, stop=stop)
        assert stopped.choices[0].text == reference("Go", 16, stop=[stop]).text
        assert stopped.choices[0].finish_reason == "stop"
        assert wait_for(lambda: metrics(server)["testbed_kv_blocks_used"] == 0)
