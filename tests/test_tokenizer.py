"""Tokenizer: ids, decoding and chat templates against transformers' tokenizers built from
the same files (a tiny GGUF vocabulary and the Hugging Face directory transformers saves),
and the streaming detokenizer against plain decode."""
import json
import unicodedata
from pathlib import Path

import gguf
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from tokenizers import Regex, Tokenizer as RustTokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer

from testbed.tokenizer import ChatTemplateError, byte_level_tokenizer, tokenizer_from_hf_dir
from testbed.tokenizer.build import QWEN2_SPLIT_PATTERN
from testbed.weights import load_tokenizer

CORPUS = [
    "def quicksort(arr):\n    if len(arr) <= 1:\n        return arr\n    pivot = arr[0]  # 12345",
    "Héllo wörld, naïve café! 世界你好。 Привет мир. مرحبا",
    "the quick brown fox jumps over the lazy dog; THE QUICK BROWN FOX's tail",
    "    indented\n\n\ttabs  and   spaces\r\n trailing   ",
    "emoji 😀🎉👍🏽 and ünïcödé, math ∑∫√ 3.14159 2**10 = 1024",
]
SAMPLES = CORPUS + [
    "<|im_start|>user\nWrite code<|im_end|>\n<|im_start|>assistant\n",
    '<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>',
    "digits 0123456789 and 1,000,000.5", "   ", "\n\n\n", "a\u00a0b\u2003c", "x" * 50,
    "unseen: Ωμέγα ★ ☃ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "<|im_end|><|im_end|>", "<|im_end", "",
]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
USER_DEFINED = ["<tool_call>", "</tool_call>"]

# A template in the style of Qwen2.5's: default system prompt, tools as JSON, tool calls
# and responses, whitespace control, namespace and loop variables, raise_exception.
CHAT_TEMPLATE = """{%- if messages[0]['role'] == 'system' %}
    {%- set system = messages[0]['content'] %}{%- set rest = messages[1:] %}
{%- else %}
    {%- set system = 'You are a helpful assistant.' %}{%- set rest = messages %}
{%- endif %}
{{- '<|im_start|>system\\n' + system }}
{%- if tools %}
    {{- '\\n\\n# Tools\\n<tools>' }}
    {%- for tool in tools %}
        {{- '\\n' + tool | tojson }}
    {%- endfor %}
    {{- '\\n</tools>' }}
{%- endif %}
{{- '<|im_end|>\\n' }}
{%- set ns = namespace(turns=0) %}
{%- for message in rest %}
    {%- if message.role not in ['user', 'assistant', 'tool'] %}
        {{- raise_exception('unexpected role ' + message.role) }}
    {%- endif %}
    {%- if message.role == 'tool' %}
        {{- '<|im_start|>user\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}
    {%- else %}
        {%- set ns.turns = ns.turns + 1 %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content }}
        {%- for call in message.tool_calls | default([]) %}
            {{- '\\n<tool_call>\\n' + call | tojson(indent=2) + '\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- endif %}
    {%- if loop.last and add_generation_prompt %}
        {{- '<|im_start|>assistant\\n' }}
    {%- endif %}
{%- endfor %}
"""
CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "Be terse. Ünïcode ok."},
     {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
     {"role": "user", "content": "and 3+3?"}],
    [{"role": "user", "content": "weather?"},
     {"role": "assistant", "content": "", "tool_calls": [{"name": "get_weather", "arguments": {"city": "Zürich"}}]},
     {"role": "tool", "content": '{"temp": 21}'}],
]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather <now>",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


def train_tiny_bpe() -> RustTokenizer:
    tok = RustTokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer)
    return tok


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    """A GGUF holding only a (trained, tiny) Qwen2-style vocabulary and one tensor."""
    model = json.loads(train_tiny_bpe().to_str())["model"]
    tokens = sorted(model["vocab"], key=model["vocab"].get) + SPECIALS + USER_DEFINED
    types = [1] * len(model["vocab"]) + [3] * len(SPECIALS) + [4] * len(USER_DEFINED)
    path = tmp_path_factory.mktemp("tok") / "tok.gguf"
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([" ".join(m) for m in model["merges"]])
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_pad_token_id(tokens.index("<|endoftext|>"))
    writer.add_bos_token_id(tokens.index("<|endoftext|>"))
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    writer.add_tensor("token_embd.weight", np.zeros((len(tokens), 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def reference(tiny_gguf):
    return AutoTokenizer.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)


@pytest.fixture(scope="module")
def ours(tiny_gguf):
    return load_tokenizer(str(tiny_gguf))


@pytest.fixture(scope="module")
def saved_dir(reference, tmp_path_factory) -> Path:
    """The Hugging Face directory transformers writes for the same tokenizer."""
    path = tmp_path_factory.mktemp("hf_tok")
    reference.save_pretrained(path)
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 3]}))
    return path


def test_gguf_ids_match_transformers(ours, reference):
    assert ours.vocab_size == len(reference)
    for text in SAMPLES:
        nfc = unicodedata.normalize("NFC", text)
        assert ours.encode(text) == reference.encode(nfc, add_special_tokens=False), text


def test_gguf_normalizes_to_nfc(ours, reference):
    """Qwen2's tokenizer applies NFC (its tokenizer.json says so); transformers' GGUF
    conversion omits the normalizer, so compare against it on the composed text."""
    decomposed = "cafe\u0301 n\u0303"
    assert ours.encode(decomposed) == ours.encode("café ñ")
    assert ours.encode(decomposed) == reference.encode("café ñ", add_special_tokens=False)


def test_gguf_decode_matches_transformers(ours, reference):
    rng = np.random.default_rng(0)
    streams = [ours.encode(t) for t in SAMPLES] + [list(rng.integers(0, ours.vocab_size, 40)) for _ in range(20)]
    for ids in streams:
        ids = [int(i) for i in ids]
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == reference.decode(ids, skip_special_tokens=skip)


def test_gguf_special_tokens_and_eos(ours, reference):
    assert ours.eos_token_ids == (reference.convert_tokens_to_ids("<|im_end|>"),
                                  reference.convert_tokens_to_ids("<|endoftext|>"))
    assert ours.special_tokens == {"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>",
                                   "pad_token": "<|endoftext|>"}
    assert ours.decode(ours.encode("a<tool_call>b"), skip_special_tokens=True) == "a<tool_call>b"
    assert ours.decode(ours.encode("a<|im_end|>b"), skip_special_tokens=True) == "ab"


@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("tools", [None, TOOLS])
def test_chat_template_matches_transformers(ours, reference, conversation, add_generation_prompt, tools):
    expected = reference.apply_chat_template(conversation, tools=tools, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    assert ours.apply_chat_template(conversation, tools=tools,
                                    add_generation_prompt=add_generation_prompt) == expected


def test_chat_template_raise_exception_is_a_value_error(ours):
    with pytest.raises(ChatTemplateError, match="chat template: unexpected role robot") as info:
        ours.apply_chat_template([{"role": "robot", "content": "beep"}])
    assert isinstance(info.value, ValueError)
    with pytest.raises(ChatTemplateError, match=r"messages\[0\]: expected a dict with a 'role'"):
        ours.apply_chat_template(["hello"])


def test_hf_dir_matches_transformers(saved_dir):
    ours = load_tokenizer(str(saved_dir))
    reference = AutoTokenizer.from_pretrained(saved_dir)
    for text in SAMPLES:
        assert ours.encode(text) == reference.encode(text, add_special_tokens=False), text
        ids = ours.encode(text)
        assert ours.decode(ids) == reference.decode(ids)
    for conversation in CONVERSATIONS:
        assert ours.apply_chat_template(conversation) == reference.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True)
    # generation_config.json's eos ids first, then the tokenizer's eos_token
    assert ours.eos_token_ids == (7, 3, reference.eos_token_id)


def test_hf_dir_template_sources(saved_dir, tmp_path):
    for f in saved_dir.iterdir():
        if f.name != "chat_template.jinja":
            (tmp_path / f.name).write_bytes(f.read_bytes())
    config_path = tmp_path / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]
    config_path.write_text(json.dumps(config))
    assert tokenizer_from_hf_dir(tmp_path).chat_template == "D"
    (tmp_path / "chat_template.jinja").write_text("J")
    assert tokenizer_from_hf_dir(tmp_path).chat_template == "J"
    (tmp_path / "chat_template.jinja").unlink()
    config["chat_template"] = [{"name": "tool_use", "template": "T"}]
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"tokenizer_config\.json: chat_template lists \['tool_use'\] but no 'default'"):
        tokenizer_from_hf_dir(tmp_path)
    config.pop("chat_template")
    config["eos_token"] = "<|nope|>"
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"eos_token '<\|nope\|>' is not in tokenizer\.json"):
        tokenizer_from_hf_dir(tmp_path)


def test_no_tokenizer_files(tmp_path):
    assert tokenizer_from_hf_dir(tmp_path) is None


def test_decode_rejects_ids_outside_vocabulary(ours):
    with pytest.raises(ValueError, match=rf"ids\[1\] = {ours.vocab_size} is outside the vocabulary"):
        ours.decode([0, ours.vocab_size])


def test_encode_rejects_lone_surrogates(ours):
    with pytest.raises(ValueError, match=r"not valid Unicode at index 2 .*'\\ud800'"):
        ours.encode("ab\ud800c")


def stream(tokenizer, ids, skip_special_tokens=False) -> list[str]:
    detok = tokenizer.detokenizer(skip_special_tokens)
    return [detok.add_token(i) for i in ids] + [detok.finalize()]


BYTE_LEVEL = byte_level_tokenizer(300)


@settings(max_examples=300, deadline=None)
@given(ids=st.lists(st.integers(0, 299), max_size=40), skip=st.booleans())
def test_streaming_byte_level_random_ids(ids, skip):
    """Random bytes: lone continuation bytes, truncated and complete multi-byte characters."""
    assert "".join(stream(BYTE_LEVEL, ids, skip)) == BYTE_LEVEL.decode(ids, skip)


@settings(max_examples=200, deadline=None)
@given(text=st.text(st.characters(exclude_characters="\ufffd", exclude_categories=["Cs"]), max_size=30))
def test_streaming_never_splits_a_character(text):
    pieces = stream(BYTE_LEVEL, BYTE_LEVEL.encode(text))
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_streaming_bpe_random_ids(ours, data):
    ids = data.draw(st.lists(st.integers(0, ours.vocab_size - 1), max_size=30))
    skip = data.draw(st.booleans())
    assert "".join(stream(ours, ids, skip)) == ours.decode(ids, skip)


def test_streaming_holds_partial_characters(ours):
    ids = BYTE_LEVEL.encode("a世b")  # 'a', three bytes of 世, 'b'
    assert stream(BYTE_LEVEL, ids) == ["a", "", "", "世", "b", ""]
    text = "naïve 世界 😀 code"
    pieces = stream(ours, ours.encode(text))
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)
