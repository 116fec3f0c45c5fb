"""A bounded load generator: a trace's requests, sent to any OpenAI-compatible server.

Each request goes to `POST /v1/completions` at its arrival time (times `time_scale`), with
`stream=true`, `max_tokens=output_len` and `ignore_eos=true`, so the server generates the
trace's lengths. The prompt is token ids (valid OpenAI: `prompt` as a list of ints) when the
trace has them or they can be synthesized for the server's vocabulary, else text. Client-side
times (seconds since the run started; arrival = when the request was sent) give TTFT, TPOT,
ITL and E2E as `testbed.metrics` defines them; token times are those of the streamed chunks
(one per token from this project's server), the token count is the server's reported usage.

Bounded: at most `max_requests` requests, one thread each, and a global `timeout_s` after
which nothing more is sent and open streams are cut. Only loopback URLs unless
`allow_remote`.
"""
from __future__ import annotations

import http.client
import ipaddress
import json
import math
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pandas as pd

from testbed.metrics import request_latencies, summarize
from testbed.replay.recorder import STEP_SCHEMA, Recorder
from testbed.traces import Trace, apply_transforms, with_prompt_tokens

PROMPT_KINDS = ("auto", "tokens", "text")
WORDS = ("time", "year", "people", "way", "day", "man", "thing", "woman", "life", "child",
         "world", "school", "state", "family", "student", "group", "country", "problem",
         "hand", "part", "place", "case", "week", "company", "system", "program", "question",
         "work", "number", "night", "point", "home", "water", "room", "mother", "area")


@dataclass(slots=True)
class LoadConfig:
    url: str
    model: str | None = None  # default: the first model the server lists
    max_requests: int = 100
    time_scale: float = 1.0  # arrival times are multiplied by this (0.5: twice the rate)
    concurrency_limit: int | None = None  # most requests in flight at once
    timeout_s: float = 300.0  # for the whole run
    prompt_kind: str = "auto"  # auto | tokens | text
    vocab_size: int | None = None  # for synthesized token ids (default: the server's)
    allow_remote: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_requests < 1:
            raise ValueError(f"max_requests must be >= 1, got {self.max_requests}")
        if not self.time_scale >= 0 or math.isinf(self.time_scale):
            raise ValueError(f"time_scale must be a finite number >= 0, got {self.time_scale}")
        if self.concurrency_limit is not None and self.concurrency_limit < 1:
            raise ValueError(f"concurrency_limit must be >= 1, got {self.concurrency_limit}")
        if not 0 < self.timeout_s < math.inf:
            raise ValueError(f"timeout_s must be a positive number of seconds, got {self.timeout_s}")
        if self.prompt_kind not in PROMPT_KINDS:
            raise ValueError(f"prompt_kind {self.prompt_kind!r}: choose one of {', '.join(PROMPT_KINDS)}")


@dataclass(frozen=True, slots=True)
class Endpoint:
    scheme: str
    host: str
    port: int

    def connect(self, timeout: float) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        return kind(self.host, self.port, timeout=timeout)


@dataclass(frozen=True, slots=True)
class PlannedRequest:
    request_id: str
    at_s: float  # when to send it, from the run's start
    prompt: list[int] | str
    prompt_len: int
    output_len: int


@dataclass(slots=True)
class ClientResult:
    """What the client saw of one request (times in seconds from the run's start)."""

    planned: PlannedRequest
    status: str = "aborted"  # finished | rejected (HTTP 4xx) | aborted (timeout, error, not sent)
    reason: str = "not sent: the run's timeout came first"
    sent_s: float | None = None
    finish_s: float | None = None
    token_times: list[float] = field(default_factory=list)
    prompt_tokens: int | None = None  # as the server's usage reports them
    completion_tokens: int | None = None
    cached_tokens: int = 0

    @property
    def n_output_tokens(self) -> int:
        return len(self.token_times) if self.completion_tokens is None else self.completion_tokens

    def row(self) -> dict[str, Any]:
        """A requests.parquet row (the recorder's schema; the client cannot see queueing)."""
        p = self.planned
        arrival = p.at_s if self.sent_s is None else self.sent_s
        first = self.token_times[0] if self.token_times else None
        lat = request_latencies(arrival, None, first, self.finish_s, self.n_output_tokens)
        return {"request_id": p.request_id, "arrival_s": arrival,
                "prompt_len": self.prompt_tokens or p.prompt_len, "output_len": p.output_len,
                "n_output_tokens": self.n_output_tokens, "cached_prompt_tokens": self.cached_tokens,
                "first_scheduled_s": None, "first_token_s": first, "finish_s": self.finish_s,
                "ttft": lat["ttft"], "tpot": lat["tpot"], "e2e": lat["e2e"], "queue_s": lat["queue"],
                "n_preemptions": 0, "status": self.status, "reason": self.reason,
                "slo_met": None, "priority": 0}


def endpoint(url: str, allow_remote: bool = False) -> Endpoint:
    """The server of `url` (`http://host:port`, optionally ending in `/v1`); anything but a
    loopback address is refused unless `allow_remote`."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"url {url!r}: expected http://HOST:PORT")
    if parts.path.rstrip("/") not in ("", "/v1"):
        raise ValueError(f"url {url!r}: give the server's root (or its /v1), not {parts.path!r}")
    host = parts.hostname
    if not allow_remote and not _is_loopback(host):
        raise ValueError(f"url {url!r} is not a loopback address; pass --allow-remote to send "
                         "load to another machine")
    return Endpoint(parts.scheme, host, parts.port or (443 if parts.scheme == "https" else 80))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def list_models(server: Endpoint, timeout: float = 10.0) -> list[dict[str, Any]]:
    """`GET /v1/models`: the server's model cards."""
    conn = server.connect(timeout)
    try:
        conn.request("GET", "/v1/models")
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    if resp.status != 200:
        raise ValueError(f"GET /v1/models answered {resp.status}: {body[:200]!r}")
    return json.loads(body)["data"]


def plan_requests(trace: Trace, config: LoadConfig, vocab_size: int | None) -> list[PlannedRequest]:
    """The first `max_requests` requests of `trace` with their send times and prompts."""
    trace = apply_transforms(trace, {"head": config.max_requests})
    kind = config.prompt_kind
    if kind == "auto":
        synthesizable = not trace.has("prompt_text") and bool(vocab_size)
        kind = "tokens" if trace.has("prompt_token_ids") or synthesizable else "text"
    if kind == "tokens" and not trace.has("prompt_token_ids"):
        if not vocab_size:
            raise ValueError("token-id prompts for a trace without them need the vocabulary "
                             "size: give --vocab-size (the server does not report one)")
        trace = with_prompt_tokens(trace, vocab_size, seed=config.seed)
    df = trace.df
    out = []
    for i, row in enumerate(df.itertuples(index=False)):
        if kind == "tokens":
            prompt: list[int] | str = [int(t) for t in row.prompt_token_ids]
        elif trace.has("prompt_text"):
            prompt = row.prompt_text
        else:
            words = random.Random(f"{config.seed}:{row.request_id}")
            prompt = " ".join(words.choice(WORDS) for _ in range(int(row.prompt_len)))
        out.append(PlannedRequest(str(row.request_id), float(row.arrival_s) * config.time_scale,
                                  prompt, int(row.prompt_len), int(row.output_len)))
    return out


def run_load(planned: list[PlannedRequest], server: Endpoint, model: str,
             config: LoadConfig) -> list[ClientResult]:
    """Send every planned request at its time, one thread each; wait for all (bounded)."""
    results = [ClientResult(p) for p in planned]
    slots = threading.BoundedSemaphore(config.concurrency_limit or len(planned))
    t0 = time.perf_counter()
    deadline = t0 + config.timeout_s
    threads = []
    for result in results:
        send_at = t0 + result.planned.at_s
        if send_at >= deadline:
            break
        time.sleep(max(0.0, send_at - time.perf_counter()))
        thread = threading.Thread(target=_send, args=(result, server, model, slots, t0, deadline),
                                  daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join(max(0.0, deadline - time.perf_counter()) + 5.0)
    return results


def _send(result: ClientResult, server: Endpoint, model: str, slots: threading.Semaphore,
          t0: float, deadline: float) -> None:
    with slots:
        if time.perf_counter() >= deadline:
            return
        try:
            _stream(result, server, model, t0, deadline)
        except (OSError, http.client.HTTPException, ValueError) as e:
            result.status, result.reason = "aborted", f"{type(e).__name__}: {e}"
            if time.perf_counter() >= deadline:
                result.reason = f"timeout after the run's {deadline - t0:.1f} s"


def _stream(result: ClientResult, server: Endpoint, model: str, t0: float, deadline: float) -> None:
    p = result.planned
    body = json.dumps({"model": model, "prompt": p.prompt, "max_tokens": p.output_len,
                       "temperature": 0, "ignore_eos": True, "stream": True,
                       "stream_options": {"include_usage": True}})
    conn = server.connect(max(deadline - time.perf_counter(), 0.001))
    try:
        conn.connect()
        sock = conn.sock  # the response reads through it, also after `conn` lets go of it
        result.sent_s = time.perf_counter() - t0
        result.reason = "the stream ended without a finish reason"
        conn.request("POST", "/v1/completions", body=body,
                     headers={"Content-Type": "application/json", "Accept": "text/event-stream"})
        resp = conn.getresponse()
        if resp.status != 200:
            result.status = "rejected" if 400 <= resp.status < 500 else "aborted"
            result.reason = f"HTTP {resp.status}: {_error_message(resp.read())}"
            return
        while True:
            sock.settimeout(max(deadline - time.perf_counter(), 0.001))
            line = resp.readline()
            now = time.perf_counter() - t0
            if not line:
                if result.status != "finished":
                    result.reason = "the server closed the stream before it finished"
                return
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                return
            _take_chunk(result, json.loads(data), now)
    finally:
        conn.close()


def _take_chunk(result: ClientResult, chunk: dict[str, Any], now: float) -> None:
    if "error" in chunk:
        result.status, result.reason = "aborted", f"error event: {_error_message(chunk)}"
        return
    for choice in chunk.get("choices") or ():
        result.token_times.append(now)
        if choice.get("finish_reason"):
            result.status, result.reason = "finished", choice["finish_reason"]
            result.finish_s = now
    usage = chunk.get("usage")
    if usage:
        result.prompt_tokens = usage.get("prompt_tokens")
        result.completion_tokens = usage.get("completion_tokens")
        result.cached_tokens = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)


def _error_message(body: bytes | dict) -> str:
    try:
        data = json.loads(body) if isinstance(body, bytes) else body
        return str(data["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return repr(body[:200])


def summarize_results(results: list[ClientResult]) -> dict[str, Any]:
    """`testbed.metrics.summarize` of the client-side request and token tables."""
    requests, tokens = result_tables(results)
    steps = pd.DataFrame({name: pd.Series(dtype=float) for name in STEP_SCHEMA})
    return summarize(requests, steps, tokens)


def result_tables(results: list[ClientResult]) -> tuple[pd.DataFrame, pd.DataFrame]:
    requests = pd.DataFrame([r.row() for r in results])
    tokens = pd.DataFrame([{"request_id": r.planned.request_id, "index": i, "t": t}
                           for r in results for i, t in enumerate(r.token_times)],
                          columns=["request_id", "index", "t"])
    return requests, tokens


def write_results(results: list[ClientResult], out_dir: str | Path, meta: dict[str, Any],
                  summary: dict[str, Any]) -> None:
    """requests.parquet, tokens.parquet, run.json and summary.json in `out_dir`."""
    with Recorder(out_dir, tokens=True) as recorder:
        recorder.start(meta)
        for result in results:
            recorder.request(result.row())
            for i, t in enumerate(result.token_times):
                recorder.token(result.planned.request_id, i, t)
        recorder.close(summary=summary)
