"""The generation loop: batching, stopping, streaming and statistics."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testbed.generate import StopStringMatcher, TokenEvent, generate
from testbed.model.config import ModelConfig
from testbed.model.qwen2 import Qwen2Model
from testbed.request import SamplingParams
from testbed.tokenizer import byte_level_tokenizer
from tiny_qwen2 import random_weights

CONFIG = ModelConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                     rope_theta=10_000.0, max_position_embeddings=256, name="gen-test")
PROMPTS = [[72, 101, 108, 108, 111], list(range(30, 52)), [7], [300, 301, 302, 303, 304, 305]]


@pytest.fixture(scope="module")
def model():
    return Qwen2Model(CONFIG, random_weights(CONFIG, seed=3))


@pytest.fixture(scope="module")
def tokenizer():
    return byte_level_tokenizer(CONFIG.vocab_size)


def tokens_alone(model, prompt, n, sampling=SamplingParams()):
    return generate(model, [prompt], sampling, max_tokens=n).completions[0].token_ids


def test_batch_of_different_lengths_equals_each_prompt_alone(model):
    together = generate(model, PROMPTS, max_tokens=16).completions
    for prompt, completion in zip(PROMPTS, together):
        assert completion.token_ids == tokens_alone(model, prompt, 16)
        assert completion.finish_reason == "length"


def test_seeded_sampling_is_batch_independent(model):
    params = [SamplingParams(temperature=1.0, top_p=0.9, seed=i) for i in range(len(PROMPTS))]
    together = generate(model, PROMPTS, params, max_tokens=12).completions
    for prompt, p, completion in zip(PROMPTS, params, together):
        assert completion.token_ids == tokens_alone(model, prompt, 12, p)


def test_early_finishers_leave_the_others_unchanged(model):
    reference = [tokens_alone(model, p, 16) for p in PROMPTS]
    # Prompt 1 stops on its 4th token, prompt 3 on its 2nd; the rest run to the limit.
    params = [SamplingParams(), SamplingParams(stop_token_ids=(reference[1][3],)),
              SamplingParams(), SamplingParams(stop_token_ids=(reference[3][1],))]
    out = generate(model, PROMPTS, params, max_tokens=16).completions
    assert out[1].token_ids == reference[1][:reference[1].index(reference[1][3]) + 1]
    assert out[3].token_ids == reference[3][:reference[3].index(reference[3][1]) + 1]
    assert out[1].finish_reason == out[3].finish_reason == "stop"
    assert out[0].token_ids == reference[0] and out[2].token_ids == reference[2]


def test_eos_stops_unless_ignored(model):
    full = tokens_alone(model, PROMPTS[0], 20)
    eos = full[5]
    stopped = generate(model, [PROMPTS[0]], max_tokens=20, eos_token_ids=[eos]).completions[0]
    assert stopped.token_ids == full[:full.index(eos) + 1]
    assert stopped.finish_reason == "stop"
    ignoring = generate(model, [PROMPTS[0]], SamplingParams(ignore_eos=True), max_tokens=20,
                        eos_token_ids=[eos]).completions[0]
    assert ignoring.token_ids == full and ignoring.finish_reason == "length"


def test_stop_string_cuts_the_text(model, tokenizer):
    full = generate(model, [PROMPTS[1]], max_tokens=40, tokenizer=tokenizer).completions[0]
    assert full.text == tokenizer.decode(full.token_ids)
    stop = full.text[12:15]
    cut = full.text[:full.text.index(stop)]
    events: list[TokenEvent] = []
    out = generate(model, [PROMPTS[1]], max_tokens=40, tokenizer=tokenizer, stop=[stop],
                   on_token=events.append).completions[0]
    assert out.text == cut
    assert out.finish_reason == "stop"
    assert out.token_ids == full.token_ids[:len(out.token_ids)]
    assert len(out.token_ids) < 40
    assert "".join(e.text for e in events) == cut
    assert [e.token_id for e in events] == out.token_ids


def test_events_stream_every_token_with_its_text(model, tokenizer):
    events: list[TokenEvent] = []
    result = generate(model, PROMPTS[:3], max_tokens=10, tokenizer=tokenizer,
                      on_token=events.append)
    for i, completion in enumerate(result.completions):
        mine = [e for e in events if e.index == i]
        assert [e.token_id for e in mine] == completion.token_ids
        assert "".join(e.text for e in mine) == completion.text
        assert completion.text == tokenizer.decode(completion.token_ids)
        assert [e.finish_reason for e in mine] == [None] * 9 + ["length"]


def test_statistics_count_prefill_and_decode_tokens(model):
    stats = generate(model, PROMPTS, max_tokens=6).stats
    assert stats.prompt_tokens == sum(len(p) for p in PROMPTS)
    assert stats.decode_tokens == len(PROMPTS) * 5
    assert stats.decode_steps == 5
    assert stats.prefill_tokens_per_s > 0 and stats.decode_tokens_per_s > 0


def test_single_token_generation_needs_no_decode_step(model):
    result = generate(model, PROMPTS, max_tokens=1)
    assert [len(c.token_ids) for c in result.completions] == [1] * len(PROMPTS)
    assert result.stats.decode_steps == 0


@pytest.mark.parametrize("kwargs,match", [
    (dict(prompts=[]), "no prompts"),
    (dict(prompts=[[1], []]), "prompt 1 is empty"),
    (dict(prompts=[[1, 512]]), "token id 512"),
    (dict(prompts=[[1]], max_tokens=0), "max_tokens"),
    (dict(prompts=[[1] * 200], max_tokens=100), "max_position_embeddings"),
    (dict(prompts=[[1]], stop=["x"]), "tokenizer"),
    (dict(prompts=[[1], [2]], sampling=[SamplingParams()]), "1 SamplingParams for 2"),
])
def test_bad_requests_are_rejected(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate(model, **{"max_tokens": 8, **kwargs})


class PieceDetokenizer:
    """Each token id is an index into a list of text pieces."""

    def __init__(self, pieces):
        self.pieces = pieces

    def add_token(self, token_id):
        return self.pieces[token_id]

    def finalize(self):
        return ""


def test_matcher_holds_back_a_possible_stop_prefix():
    m = StopStringMatcher(PieceDetokenizer(["ab", "<", "|e", "nd|>", "x"]), ["<|end|>"])
    assert m.add(0) == "ab"
    assert m.add(1) == ""
    assert m.add(2) == ""
    assert m.add(3) == ""
    assert m.stopped


def test_matcher_releases_a_false_alarm():
    m = StopStringMatcher(PieceDetokenizer(["ab", "<", "|x"]), ["<|end|>"])
    assert m.add(0) + m.add(1) == "ab"
    assert m.add(2) == "<|x"
    assert m.finish() == ""


@settings(max_examples=200, deadline=None)
@given(pieces=st.lists(st.text("ab<>|", max_size=3), min_size=1, max_size=12),
       stops=st.lists(st.text("ab<>|", min_size=1, max_size=4), max_size=3))
def test_matcher_emits_the_text_up_to_the_first_stop(pieces, stops):
    # Brute force: after the first piece that completes a stop string, the text is cut
    # where the earliest stop string in it begins.
    text, hits = "", []
    for piece in pieces:
        text += piece
        hits = [text.find(s) for s in stops if s in text]
        if hits:
            break
    expected = text[:min(hits)] if hits else text
    m = StopStringMatcher(PieceDetokenizer(pieces), stops)
    emitted = ""
    for i in range(len(pieces)):
        emitted += m.add(i)
        if m.stopped:
            break
    emitted += m.finish()
    assert emitted == expected
    assert m.stopped == bool(hits)
