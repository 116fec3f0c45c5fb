"""The real Qwen2.5-Coder-0.5B-Instruct GGUF's tokenizer and chat template against
transformers' tokenizer loaded from the same file. Needs `python -m testbed fetch-model`."""
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from testbed.cli.fetch_model import DEFAULT_DEST
from testbed.weights import load_tokenizer

REAL_GGUF = Path(__file__).resolve().parents[1] / DEFAULT_DEST
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not REAL_GGUF.is_file(),
                       reason=f"{REAL_GGUF} is absent; run `python -m testbed fetch-model` to get it"),
]

SAMPLES = [
    "def quicksort(arr):\n    if len(arr) <= 1:\n        return arr\n    pivot = arr[len(arr) // 2]\n",
    "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); return 0; }",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;",
    "Héllo wörld, naïve café! 世界你好。 Привет мир. مرحبا. こんにちは 안녕하세요",
    "emoji 😀🎉👍🏽👨‍👩‍👧 math ∑∫√∞ ≠ ≤",
    "digits 0123456789 1,000,000.5 3.14159e-10 2**64 = 18446744073709551616",
    "    indented\n\n\ttabs  and   spaces\r\n trailing   \n\n\n",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n",
    "<|fim_prefix|>def f(x):<|fim_suffix|>\n    return y<|fim_middle|>",
    '<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>',
    "don't can't I'LL we've they'RE", "a\u00a0b\u2003c\u200bd", "cafe\u0301", "",
]
CONVERSATIONS = [
    [{"role": "user", "content": "Write quicksort in Python."}],
    [{"role": "system", "content": "You are a terse assistant."},
     {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
     {"role": "user", "content": "and 3+3?"}],
    [{"role": "user", "content": "Weather in Zürich?"},
     {"role": "assistant", "content": "",
      "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}]},
     {"role": "tool", "content": '{"temp_c": 21}'}],
]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


@pytest.fixture(scope="module")
def ours():
    return load_tokenizer(str(REAL_GGUF))


@pytest.fixture(scope="module")
def reference():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(REAL_GGUF.parent, gguf_file=REAL_GGUF.name)


def test_ids_match_transformers(ours, reference):
    assert ours.vocab_size == len(reference) == 151936
    for text in SAMPLES:
        # Qwen2 normalizes to NFC; transformers' GGUF conversion leaves the normalizer out.
        expected = reference.encode(unicodedata.normalize("NFC", text), add_special_tokens=False)
        assert ours.encode(text) == expected, text


def test_decode_matches_transformers(ours, reference):
    rng = np.random.default_rng(0)
    streams = [ours.encode(t) for t in SAMPLES]
    streams += [[int(i) for i in rng.integers(0, 151665, 64)] for _ in range(20)]
    streams += [[int(i) for i in rng.integers(151640, 151936, 16)] for _ in range(5)]
    for ids in streams:
        for skip in (False, True):
            assert ours.decode(ids, skip) == reference.decode(ids, skip_special_tokens=skip)


def test_eos_and_special_tokens(ours, reference):
    assert ours.eos_token_ids == (151645, 151643)  # <|im_end|>, <|endoftext|>
    assert ours.special_tokens["eos_token"] == reference.eos_token == "<|im_end|>"


@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("tools", [None, TOOLS])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_matches_transformers(ours, reference, conversation, tools, add_generation_prompt):
    expected = reference.apply_chat_template(conversation, tools=tools, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    assert ours.apply_chat_template(conversation, tools=tools,
                                    add_generation_prompt=add_generation_prompt) == expected


def test_streaming_detokenizer_on_real_vocabulary(ours):
    rng = np.random.default_rng(1)
    for ids in [ours.encode(t) for t in SAMPLES] + [[int(i) for i in rng.integers(0, 151936, 80)] for _ in range(30)]:
        detok = ours.detokenizer()
        pieces = [detok.add_token(i) for i in ids] + [detok.finalize()]
        assert "".join(pieces) == ours.decode(ids)
