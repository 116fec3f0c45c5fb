"""Build a `Tokenizer` from what a model source provides: a Hugging Face directory, the
vocabulary a GGUF file carries in its metadata, or nothing (a byte-level stand-in)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers

from testbed.tokenizer.tokenizer import Tokenizer

# Qwen2's pre-tokenizer split (digits one at a time), as in its tokenizer.json.
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

GGUF_TOKEN_CONTROL = 3       # special tokens such as <|im_end|>
GGUF_TOKEN_USER_DEFINED = 4  # added tokens matched whole but not special, such as <tool_call>

_SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token")


def _unique(ids: Sequence[int]) -> tuple[int, ...]:
    return tuple(dict.fromkeys(ids))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def _token_content(value: Any) -> str | None:
    """tokenizer_config.json writes a special token as a string or as {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _chat_template_from_dir(path: Path, config: dict) -> str | None:
    jinja_file = path / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}]
        named = {t.get("name"): t.get("template") for t in template}
        if "default" not in named:
            raise ValueError(f"{path / 'tokenizer_config.json'}: chat_template lists "
                             f"{sorted(named)} but no 'default'")
        template = named["default"]
    return template


def tokenizer_from_hf_dir(path: str | Path, eos_token_ids: Sequence[int] = ()) -> Tokenizer | None:
    """From `tokenizer.json` and `tokenizer_config.json`; None when there is no tokenizer.json.

    End-of-sequence ids are `eos_token_ids` (from generation_config.json) plus the
    tokenizer's own `eos_token`.
    """
    path = Path(path)
    tokenizer_file = path / "tokenizer.json"
    if not tokenizer_file.is_file():
        return None
    try:
        backend = tokenizers.Tokenizer.from_file(str(tokenizer_file))
    except Exception as e:  # the Rust library raises plain Exceptions for bad files
        raise ValueError(f"{tokenizer_file}: cannot be read as a tokenizer ({e})") from None
    config_file = path / "tokenizer_config.json"
    config = _read_json(config_file) if config_file.is_file() else {}
    special = {k: c for k in _SPECIAL_TOKEN_KEYS if (c := _token_content(config.get(k)))}
    ids = list(eos_token_ids)
    if "eos_token" in special:
        eos_id = backend.token_to_id(special["eos_token"])
        if eos_id is None:
            raise ValueError(f"{config_file}: eos_token {special['eos_token']!r} is not in "
                             f"{tokenizer_file.name}")
        ids.append(eos_id)
    return Tokenizer(backend, _unique(ids), _chat_template_from_dir(path, config), special,
                     source=str(path))


def tokenizer_from_gguf_vocab(tokens: Sequence[str], token_types: Sequence[int],
                              merges: Sequence[str], *, eos_token_ids: Sequence[int],
                              special_token_ids: dict[str, int], chat_template: str | None,
                              source: str) -> Tokenizer:
    """Qwen2's byte-level BPE rebuilt from GGUF `tokenizer.ggml.*` metadata.

    Every token keeps its list index as id; control tokens become special added tokens and
    user-defined ones plain added tokens, so both match whole in text. No BOS is added.
    `special_token_ids` maps `bos_token`/`eos_token`/`pad_token`/`unk_token` to ids.
    """
    if len(token_types) != len(tokens):
        raise ValueError(f"{source}: tokenizer.ggml.token_type has {len(token_types)} entries, "
                         f"tokenizer.ggml.tokens has {len(tokens)}")
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError(f"{source}: tokenizer.ggml.tokens holds duplicate tokens")
    pairs = []
    for line, merge in enumerate(merges):
        pair = tuple(merge.split(" ", 1))
        if len(pair) != 2:
            raise ValueError(f"{source}: tokenizer.ggml.merges[{line}] = {merge!r} is not a pair")
        pairs.append(pair)
    try:
        bpe = models.BPE(vocab, pairs, unk_token=None, byte_fallback=False)
    except Exception as e:  # the Rust library raises plain Exceptions, e.g. for unknown merges
        raise ValueError(f"{source}: tokenizer.ggml.merges do not fit the tokens ({e})") from None
    backend = tokenizers.Tokenizer(bpe)
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, kind in zip(tokens, token_types) if kind == GGUF_TOKEN_CONTROL])
    backend.add_tokens([AddedToken(t, special=False, normalized=False)
                        for t, kind in zip(tokens, token_types) if kind == GGUF_TOKEN_USER_DEFINED])
    for key, token_id in special_token_ids.items():
        if not 0 <= token_id < len(tokens):
            raise ValueError(f"{source}: {key} id {token_id} is outside the {len(tokens)} tokens")
    special = {key: tokens[token_id] for key, token_id in special_token_ids.items()}
    return Tokenizer(backend, _unique(eos_token_ids), chat_template, special, source=source)


BYTE_LEVEL_EOS = "<|endoftext|>"
BYTE_LEVEL_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}")


def byte_level_spelling() -> dict[int, str]:
    """GPT-2's byte-level alphabet: each byte as one printable character (printable
    Latin-1 bytes stand for themselves, the rest map to U+0100 onwards in byte order)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    spelling = {b: chr(b) for b in printable}
    others = (b for b in range(256) if b not in spelling)
    spelling.update({b: chr(256 + n) for n, b in enumerate(others)})
    return spelling


def byte_level_tokenizer(vocab_size: int, source: str = "byte-level") -> Tokenizer:
    """A stand-in for models without a tokenizer: id b (< 256) is byte b, 256 is EOS.

    Ids above 256 decode to visible placeholders `<|unused_N|>`, so text sampled from random
    weights over a full-size vocabulary still decodes.
    """
    if vocab_size < 257:
        raise ValueError(f"{source}: a byte-level tokenizer needs vocab_size >= 257, got {vocab_size}")
    vocab = {char: b for b, char in byte_level_spelling().items()}
    vocab[BYTE_LEVEL_EOS] = 256
    vocab.update({f"<|unused_{i}|>": i for i in range(257, vocab_size)})
    backend = tokenizers.Tokenizer(models.BPE(vocab, [], unk_token=None, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(BYTE_LEVEL_EOS, special=True, normalized=False)])
    return Tokenizer(backend, (256,), BYTE_LEVEL_CHAT_TEMPLATE,
                     {"eos_token": BYTE_LEVEL_EOS}, source=source)
