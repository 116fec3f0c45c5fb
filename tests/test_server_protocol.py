"""Request validation and response shapes of the OpenAI-compatible server, without a model:
each rule is checked on its own against a byte-level tokenizer."""
from __future__ import annotations

import json
import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from testbed.server.engine_loop import EngineState
from testbed.server.prometheus import Histogram, ServerMetrics
from testbed.server.protocol import (APIError, ModelCard, parse_chat, parse_completion,
                                     parse_json_body)
from testbed.server.responses import ResponseBuilder, usage
from testbed.tokenizer import byte_level_tokenizer

TOKENIZER = byte_level_tokenizer(512, source="test bytes")
CARD = ModelCard("tiny", context_len=64, vocab_size=512, eos_token_ids=(256,))


def completion(**body):
    return parse_completion({"model": "tiny", "prompt": "Hi", **body}, CARD, TOKENIZER)


def error_of(parse, body) -> APIError:
    with pytest.raises(APIError) as info:
        parse(body, CARD, TOKENIZER)
    return info.value


def test_prompt_forms_give_the_same_token_ids():
    ids = TOKENIZER.encode("Hi there")
    for prompt in ("Hi there", ["Hi there"], ids, [ids]):
        req = parse_completion({"prompt": prompt}, CARD, TOKENIZER)
        assert req.prompt_token_ids == ids
    assert parse_completion({"prompt": "Hi there"}, CARD, TOKENIZER).prompt_text == "Hi there"
    assert parse_completion({"prompt": ids}, CARD, TOKENIZER).prompt_text is None


def test_defaults_fill_the_context_greedily_and_stop_at_eos():
    req = completion()
    assert req.max_tokens == CARD.context_len - 2
    assert req.sampling.temperature == 0 and req.sampling.top_p == 1 and req.sampling.top_k == 0
    assert req.sampling.stop_token_ids == (256,) and not req.sampling.ignore_eos
    assert req.stop == () and not req.stream and not req.include_usage


def test_sampling_and_extension_parameters_are_taken():
    req = completion(max_tokens=5, temperature=0.7, top_p=0.9, top_k=40, seed=7,
                     ignore_eos=True, stop=["\n", "END"], stream=True,
                     stream_options={"include_usage": True}, n=1, user="me")
    s = req.sampling
    assert (req.max_tokens, s.temperature, s.top_p, s.top_k, s.seed, s.ignore_eos) == \
        (5, 0.7, 0.9, 40, 7, True)
    assert req.stop == ("\n", "END") and req.stream and req.include_usage
    assert completion(top_k=-1).sampling.top_k == 0
    assert completion(stop="x").stop == ("x",)


def test_chat_applies_the_template_and_accepts_text_parts():
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi"},
                                             {"type": "text", "text": " you"}]}]
    req = parse_chat({"messages": messages, "max_completion_tokens": 3}, CARD, TOKENIZER)
    expected = "system: Be brief.\nuser: Hi you\nassistant: "
    assert req.prompt_text == expected
    assert req.prompt_token_ids == TOKENIZER.encode(expected)
    assert req.max_tokens == 3


@pytest.mark.parametrize("body, param, code", [
    ({"model": "other", "prompt": "Hi"}, "model", "model_not_found"),
    ({"prompt": "Hi", "max_tokens": -1}, "max_tokens", None),
    ({"prompt": "Hi", "max_tokens": 0}, "max_tokens", None),
    ({"prompt": "Hi", "max_tokens": 2.5}, "max_tokens", None),
    ({"prompt": "Hi", "max_tokens": 10**9}, "max_tokens", "context_length_exceeded"),
    ({"prompt": "Hi", "max_tokens": 63}, "max_tokens", "context_length_exceeded"),
    ({"prompt": "x" * 64}, "prompt", "context_length_exceeded"),
    ({"prompt": ""}, "prompt", None),
    ({"prompt": []}, "prompt", None),
    ({}, "prompt", None),
    ({"prompt": ["a", "b"]}, "prompt", None),
    ({"prompt": [1, 512]}, "prompt", None),
    ({"prompt": [1, -3]}, "prompt", None),
    ({"prompt": [1, True]}, "prompt", None),
    ({"prompt": 5}, "prompt", None),
    ({"prompt": "Hi", "temperature": -0.1}, "temperature", None),
    ({"prompt": "Hi", "temperature": 2.5}, "temperature", None),
    ({"prompt": "Hi", "temperature": "hot"}, "temperature", None),
    ({"prompt": "Hi", "top_p": 0}, "top_p", None),
    ({"prompt": "Hi", "top_p": 1.5}, "top_p", None),
    ({"prompt": "Hi", "top_k": -2}, "top_k", None),
    ({"prompt": "Hi", "seed": "x"}, "seed", None),
    ({"prompt": "Hi", "stop": ""}, "stop", None),
    ({"prompt": "Hi", "stop": ["a", 3]}, "stop", None),
    ({"prompt": "Hi", "stream": "yes"}, "stream", None),
    ({"prompt": "Hi", "stream_options": {"include_usage": True}}, "stream_options", None),
    ({"prompt": "Hi", "stream": True, "stream_options": {"other": 1}}, "stream_options", None),
    ({"prompt": "Hi", "ignore_eos": 1}, "ignore_eos", None),
    ({"prompt": "Hi", "n": 2}, "n", None),
    ({"prompt": "Hi", "presence_penalty": 0.5}, "presence_penalty", None),
    ({"prompt": "Hi", "logprobs": 3}, "logprobs", None),
    ({"prompt": "Hi", "echo": True}, "echo", None),
    ({"prompt": "Hi", "frobnicate": 1}, "frobnicate", "unknown_parameter"),
])
def test_bad_completion_requests_name_the_parameter(body, param, code):
    err = error_of(parse_completion, body)
    assert err.status == 400
    assert err.body() == {"error": {"message": err.message, "type": "invalid_request_error",
                                    "param": param, "code": code}}
    assert err.message


@pytest.mark.parametrize("body, param", [
    ({}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"content": "no role"}]}, "messages[0]"),
    ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
     "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3,
      "max_completion_tokens": 4}, "max_completion_tokens"),
    ({"messages": [{"role": "user", "content": "Hi"}], "response_format": {"type": "json_object"}},
     "response_format"),
    ({"messages": [{"role": "user", "content": "Hi"}], "tools": [{"type": "function"}]}, "tools"),
    ({"messages": [{"role": "user", "content": "Hi"}], "prompt": "x"}, "prompt"),
])
def test_bad_chat_requests_name_the_parameter(body, param):
    err = error_of(parse_chat, body)
    assert err.status == 400 and err.param == param


def test_malformed_bodies():
    for raw in (b"{not json", b"[1, 2]", b"\xff\xfe", b""):
        with pytest.raises(APIError) as info:
            parse_json_body(raw)
        assert info.value.status == 400 and info.value.code == "invalid_json"
    assert parse_json_body(b'{"a": 1}') == {"a": 1}


def test_response_shapes():
    u = usage(5, 3, cached_tokens=2)
    assert u["total_tokens"] == 8 and u["prompt_tokens_details"] == {"cached_tokens": 2}
    text = ResponseBuilder("m", chat=False)
    assert text.id.startswith("cmpl-") and text.first_chunk() is None
    body = text.complete("abc", "length", u)
    assert body["object"] == "text_completion" and body["choices"][0]["text"] == "abc"
    assert body["usage"] == u
    chat = ResponseBuilder("m", chat=True)
    assert chat.id.startswith("chatcmpl-")
    assert chat.first_chunk()["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chat.chunk("x", None)["choices"][0]["delta"] == {"content": "x"}
    last = chat.chunk("", "stop")["choices"][0]
    assert last["delta"] == {} and last["finish_reason"] == "stop"
    end = chat.usage_chunk(u)
    assert end["choices"] == [] and end["usage"] == u and end["object"] == "chat.completion.chunk"
    assert chat.complete("hi", "stop", u)["choices"][0]["message"] == \
        {"role": "assistant", "content": "hi"}


def test_histogram_buckets_are_cumulative_and_inclusive():
    hist = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 1.0, 3.0):
        hist.observe(v)
    assert hist.cumulative() == [("0.1", 2), ("1.0", 4), ("+Inf", 5)]
    assert hist.count == 5 and math.isclose(hist.sum, 4.65)
    with pytest.raises(ValueError):
        Histogram((1.0, 0.5))


def test_metrics_text_parses_as_prometheus_exposition():
    state = EngineState(waiting=2, running=3, swapped=1, kv_blocks_used=30, kv_blocks_free=90)
    metrics = ServerMetrics('we"ird\\name', lambda: state)
    metrics.ttft.observe(0.3)
    metrics.ttft.observe(12.0)
    metrics.invalid_request()
    families = {f.name: f for f in text_string_to_metric_families(metrics.render())}
    sample = {s.name: s for f in families.values() for s in f.samples if "le" not in s.labels}
    assert sample["testbed_num_requests_waiting"].value == 2
    assert sample["testbed_num_requests_swapped"].value == 1
    assert sample["testbed_kv_usage_fraction"].value == 0.25
    assert sample["testbed_invalid_requests_total"].value == 1
    assert sample["testbed_kv_blocks_used"].labels == {"model_name": 'we"ird\\name'}
    ttft = families["testbed_time_to_first_token_seconds"]
    assert ttft.type == "histogram"
    buckets = [(s.labels["le"], s.value) for s in ttft.samples if s.name.endswith("_bucket")]
    assert dict(buckets)["0.25"] == 0 and dict(buckets)["0.5"] == 1
    assert dict(buckets)["10.0"] == 1 and dict(buckets)["20.0"] == 2 and buckets[-1] == ("+Inf", 2)
    assert sample["testbed_time_to_first_token_seconds_count"].value == 2
    assert json.dumps(families["testbed_requests_finished"].type) == '"counter"'
