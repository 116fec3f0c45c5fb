"""`load_model(spec)`: one entry point for every weight source, chosen by the spec's form."""
from __future__ import annotations

import re
from pathlib import Path

from testbed.tokenizer import Tokenizer
from testbed.weights.dummy import dummy_tokenizer, load_dummy
from testbed.weights.hf_dir import load_hf_dir, load_hf_tokenizer
from testbed.weights.hf_hub import resolve_hub_repo
from testbed.weights.loaded import LoadedModel

DUMMY_PREFIX = "dummy:"
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _source_kind(spec: str) -> str:
    if spec.startswith(DUMMY_PREFIX):
        return "dummy"
    path = Path(spec).expanduser()
    if path.is_dir():
        return "hf_dir"
    if path.suffix.lower() == ".gguf":
        return "gguf"
    if _REPO_ID.fullmatch(spec):
        return "hub"
    raise ValueError(f"model spec {spec!r} is neither a directory, a .gguf file, "
                     f"dummy:<name>, nor a Hugging Face repo id owner/name")


def load_model(spec: str, *, dtype: str = "float32") -> LoadedModel:
    """Load weights, config and tokenizer from `spec`:

    - an existing directory: a Hugging Face checkpoint (config.json + safetensors);
    - a path ending in `.gguf`: a Qwen2 GGUF file (dequantized);
    - `dummy:<name>`: random weights of a named config (e.g. `dummy:qwen2-0.5b`);
    - `owner/name`: a Hugging Face hub repo (cache first, then download).
    """
    spec = str(spec)
    kind = _source_kind(spec)
    if kind == "dummy":
        return load_dummy(spec.removeprefix(DUMMY_PREFIX), dtype)
    if kind == "gguf":
        from testbed.weights.gguf_file import load_gguf  # the gguf package only when needed
        return load_gguf(Path(spec).expanduser(), dtype)
    if kind == "hub":
        return load_hf_dir(resolve_hub_repo(spec), dtype)
    return load_hf_dir(Path(spec).expanduser(), dtype)


def load_tokenizer(spec: str) -> Tokenizer | None:
    """Only the tokenizer of the model `spec` names (same forms as `load_model`)."""
    spec = str(spec)
    kind = _source_kind(spec)
    if kind == "dummy":
        return dummy_tokenizer(spec.removeprefix(DUMMY_PREFIX))
    if kind == "gguf":
        from testbed.weights.gguf_file import load_gguf_tokenizer
        return load_gguf_tokenizer(Path(spec).expanduser())
    if kind == "hub":
        return load_hf_tokenizer(resolve_hub_repo(spec))
    return load_hf_tokenizer(Path(spec).expanduser())
