"""`load_model(spec)`: one entry point for every weight source, chosen by the spec's form."""
from __future__ import annotations

import re
from pathlib import Path

from testbed.weights.dummy import load_dummy
from testbed.weights.gguf_file import load_gguf
from testbed.weights.hf_dir import load_hf_dir
from testbed.weights.hf_hub import resolve_hub_repo
from testbed.weights.loaded import LoadedModel

DUMMY_PREFIX = "dummy:"
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def load_model(spec: str, *, dtype: str = "float32") -> LoadedModel:
    """Load weights, config and tokenizer from `spec`:

    - an existing directory: a Hugging Face checkpoint (config.json + safetensors);
    - a path ending in `.gguf`: a Qwen2 GGUF file (dequantized);
    - `dummy:<name>`: random weights of a named config (e.g. `dummy:qwen2-0.5b`);
    - `owner/name`: a Hugging Face hub repo (cache first, then download).
    """
    spec = str(spec)
    if spec.startswith(DUMMY_PREFIX):
        return load_dummy(spec.removeprefix(DUMMY_PREFIX), dtype)
    path = Path(spec).expanduser()
    if path.is_dir():
        return load_hf_dir(path, dtype)
    if path.suffix.lower() == ".gguf":
        return load_gguf(path, dtype)
    if _REPO_ID.fullmatch(spec):
        return load_hf_dir(resolve_hub_repo(spec), dtype)
    raise ValueError(f"model spec {spec!r} is neither a directory, a .gguf file, "
                     f"dummy:<name>, nor a Hugging Face repo id owner/name")
