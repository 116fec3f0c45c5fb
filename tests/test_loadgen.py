"""The load generator against this project's server on loopback: bounded in requests and
time, prompts as the trace gives them, client-side metrics consistent with the server's."""
from __future__ import annotations

import json
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest

from testbed import loadgen
from testbed.__main__ import main
from testbed.server import Server, serve_config
from testbed.traces import Trace, load_trace, with_prompt_tokens

MODEL = "dummy:qwen2-tiny"
OVERRIDES = ["scheduler.max_model_len=512", "engine.kv_memory_gb=0.01", "engine.host_kv_memory_gb=0"]


@pytest.fixture(scope="module")
def server():
    with Server(serve_config(MODEL, OVERRIDES), port=0) as s:
        yield s


def served(server) -> dict[str, float]:
    text = urllib.request.urlopen(server.url + "/metrics", timeout=30).read().decode()
    return {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith("testbed_") and "_bucket" not in line}


def write_trace(path, arrivals, prompt_lens, output_lens) -> str:
    with open(path, "w") as f:
        for i, (t, p, o) in enumerate(zip(arrivals, prompt_lens, output_lens)):
            f.write(json.dumps({"request_id": f"r{i}", "arrival_s": float(t),
                                "prompt_len": int(p), "output_len": int(o)}) + "\n")
    return str(path)


def trace_of(arrivals, prompt_lens, output_lens, **extra) -> Trace:
    n = len(arrivals)
    df = pd.DataFrame({"request_id": [f"r{i}" for i in range(n)], "arrival_s": arrivals,
                       "prompt_len": prompt_lens, "output_len": output_lens, **extra})
    return Trace(df, name="test")


# ---- bounds and planning, no server -----------------------------------------------------------

@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "http://localhost:1/v1",
                                 "http://[::1]:8000/", "http://127.9.9.9:80"])
def test_loopback_urls_are_accepted(url):
    assert loadgen.endpoint(url).port in (8000, 1, 80)


@pytest.mark.parametrize("url", ["http://10.0.0.1:8000", "http://192.168.1.2:8000",
                                 "http://example.com:8000", "http://8.8.8.8"])
def test_remote_urls_are_refused_unless_allowed(url):
    with pytest.raises(ValueError, match="--allow-remote"):
        loadgen.endpoint(url)
    assert loadgen.endpoint(url, allow_remote=True).host == url.split("//")[1].split(":")[0]


def test_the_command_refuses_a_remote_url_before_any_traffic(capsys):
    code = main(["loadgen", "--url", "http://10.1.2.3:8000", "--trace", "example_generic"])
    assert code == 2 and "not a loopback address" in capsys.readouterr().err


@pytest.mark.parametrize("url", ["ftp://127.0.0.1", "http://127.0.0.1:8000/v2/x", "127.0.0.1:8000"])
def test_malformed_urls_are_refused(url):
    with pytest.raises(ValueError):
        loadgen.endpoint(url)


@pytest.mark.parametrize("field, value", [("max_requests", 0), ("time_scale", -1.0),
                                          ("concurrency_limit", 0), ("timeout_s", 0.0),
                                          ("timeout_s", float("inf")), ("prompt_kind", "x")])
def test_bad_settings_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        loadgen.LoadConfig(url="http://127.0.0.1:1", **{field: value})


def test_planning_picks_prompts_and_scales_time():
    trace = trace_of([0.0, 1.0, 3.0], [4, 6, 5], [2, 3, 4])
    config = loadgen.LoadConfig(url="http://127.0.0.1:1", max_requests=2, time_scale=0.5)
    planned = loadgen.plan_requests(trace, config, vocab_size=300)
    assert [p.at_s for p in planned] == [0.0, 0.5]
    expected = with_prompt_tokens(trace, 300).df["prompt_token_ids"]
    assert [p.prompt for p in planned] == [list(expected[0]), list(expected[1])]
    assert [(p.prompt_len, p.output_len) for p in planned] == [(4, 2), (6, 3)]

    texts = loadgen.plan_requests(trace, config, vocab_size=None)
    assert all(isinstance(p.prompt, str) and len(p.prompt.split()) == p.prompt_len for p in texts)
    assert texts == loadgen.plan_requests(trace, config, vocab_size=None)  # deterministic

    with_text = trace_of([0.0], [2], [1], prompt_text=["given text"])
    assert loadgen.plan_requests(with_text, config, 300)[0].prompt == "given text"
    with pytest.raises(ValueError, match="--vocab-size"):
        loadgen.plan_requests(trace, loadgen.LoadConfig(url="http://127.0.0.1:1",
                                                        prompt_kind="tokens"), None)


# ---- against the server -----------------------------------------------------------------------

def test_loadgen_command_sends_a_bounded_trace(server, tmp_path, capsys):
    rng = np.random.default_rng(0)
    n = 10
    path = write_trace(tmp_path / "t.jsonl", np.sort(rng.uniform(0, 0.6, n)).round(3),
                       rng.integers(3, 40, n), rng.integers(2, 9, n))
    before = served(server)
    out = tmp_path / "out"
    code = main(["loadgen", "--url", server.url, "--trace", "generic", "--path", path,
                 "--max-requests", "6", "--time-scale", "0.5", "--timeout", "60",
                 "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "TTFT (s)" in captured.out and "requests" in captured.out

    trace = load_trace("generic", path)
    requests = pd.read_parquet(out / "requests.parquet").set_index("request_id")
    assert sorted(requests.index) == [f"r{i}" for i in range(6)]
    assert (requests["status"] == "finished").all()
    expected = trace.df.set_index("request_id").loc[requests.index]
    assert (requests["n_output_tokens"] == expected["output_len"]).all()
    assert (requests["prompt_len"] == expected["prompt_len"]).all()  # synthesized ids, exact
    assert (requests["arrival_s"] >= expected["arrival_s"] * 0.5).all()  # never sent early
    assert (requests["ttft"] > 0).all() and (requests["e2e"] >= requests["ttft"]).all()
    assert (requests["tpot"].dropna() > 0).all()
    tokens = pd.read_parquet(out / "tokens.parquet")
    assert tokens.groupby("request_id").size().sort_index().tolist() == \
        expected["output_len"].tolist()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_finished"] == 6 and summary["output_tokens"] == expected["output_len"].sum()
    assert summary["itl_mean_s"] > 0
    assert json.loads((out / "run.json").read_text())["status"] == "complete"

    after = served(server)
    assert after["testbed_requests_finished_total"] - before["testbed_requests_finished_total"] == 6
    assert after["testbed_prompt_tokens_total"] - before["testbed_prompt_tokens_total"] == \
        expected["prompt_len"].sum()


class SlowStreamServer(ThreadingHTTPServer):
    """A stand-in OpenAI server whose streams send one token every 20 ms: a request of
    more than 10 tokens outlasts any short timeout, whatever the machine's speed."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _SlowStreamHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _SlowStreamHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        n = body["max_tokens"]
        try:
            for i in range(n):
                if n > 10:
                    time.sleep(0.02)
                last = "length" if i == n - 1 else None
                self._event({"choices": [{"index": 0, "text": "t", "finish_reason": last}]})
            self._event({"choices": [], "usage": {"prompt_tokens": len(body["prompt"]),
                                                  "completion_tokens": n, "total_tokens": 0}})
            self.wfile.write(b"data: [DONE]\n\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    def _event(self, obj):
        self.wfile.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
        self.wfile.flush()

    def log_message(self, *args):
        pass


def test_the_timeout_stops_sending_and_cuts_streams():
    stub = SlowStreamServer()
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    try:
        trace = trace_of([0.0, 0.0, 5.0, 9.0], [5, 5, 5, 5], [3, 450, 3, 3])
        config = loadgen.LoadConfig(url=stub.url, timeout_s=1.0)
        planned = loadgen.plan_requests(trace, config, vocab_size=256)
        results = {r.planned.request_id: r for r in
                   loadgen.run_load(planned, loadgen.endpoint(stub.url), "stub", config)}
    finally:
        stub.shutdown()
        stub.server_close()
    assert results["r0"].status == "finished" and results["r0"].n_output_tokens == 3
    assert results["r1"].status == "aborted" and "timeout" in results["r1"].reason
    assert 0 < len(results["r1"].token_times) < 450
    for rid in ("r2", "r3"):
        assert results[rid].status == "aborted" and results[rid].reason.startswith("not sent")
        assert results[rid].sent_s is None
    summary = loadgen.summarize_results(list(results.values()))
    assert (summary["n_requests"], summary["n_finished"], summary["n_aborted"]) == (4, 1, 3)


def test_concurrency_limit_serializes_requests(server):
    trace = trace_of([0.0] * 4, [6] * 4, [4] * 4)
    config = loadgen.LoadConfig(url=server.url, concurrency_limit=1, timeout_s=60)
    planned = loadgen.plan_requests(trace, config, vocab_size=256)
    results = sorted(loadgen.run_load(planned, loadgen.endpoint(server.url), MODEL, config),
                     key=lambda r: r.sent_s)
    assert all(r.status == "finished" for r in results)
    for earlier, later in zip(results, results[1:]):
        assert later.sent_s >= earlier.finish_s


def test_rejected_requests_are_recorded_with_the_servers_reason(server):
    trace = trace_of([0.0], [5], [1000])  # more than the context holds
    config = loadgen.LoadConfig(url=server.url, timeout_s=30)
    planned = loadgen.plan_requests(trace, config, vocab_size=256)
    [result] = loadgen.run_load(planned, loadgen.endpoint(server.url), MODEL, config)
    assert result.status == "rejected" and "HTTP 400" in result.reason
    assert "context" in result.reason
