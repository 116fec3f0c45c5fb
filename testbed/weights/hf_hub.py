"""Resolve a Hugging Face hub repo id to a local snapshot directory: the cache first, then
the network unless HF_HUB_OFFLINE is set."""
from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

# Only what loading needs: no pytorch_model.bin, no GGUF variants, no ONNX exports.
ALLOW_PATTERNS = ["config.json", "generation_config.json", "*.safetensors",
                  "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
                  "chat_template.jinja"]


class HubUnavailableError(ValueError):
    """The repo is not in the local cache and cannot be downloaded now."""


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _how_to_get(repo_id: str) -> str:
    patterns = " ".join(f"'{p}'" for p in ALLOW_PATTERNS)
    return (f"download it where you have network access with\n"
            f"    hf download {repo_id} --include {patterns}\n"
            f"(older huggingface_hub: huggingface-cli download {repo_id} ...), then run offline "
            f"with the same HF_HOME; or pass a local model directory, a .gguf file, or "
            f"dummy:<name> instead")


def resolve_hub_repo(repo_id: str) -> Path:
    """The local directory holding `repo_id`'s config, weights and tokenizer files."""
    try:
        return Path(snapshot_download(repo_id, allow_patterns=ALLOW_PATTERNS, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    if _offline():
        raise HubUnavailableError(
            f"Hugging Face repo {repo_id} is not in the local cache and HF_HUB_OFFLINE is set; "
            + _how_to_get(repo_id))
    try:
        return Path(snapshot_download(repo_id, allow_patterns=ALLOW_PATTERNS))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        raise HubUnavailableError(
            f"Hugging Face repo {repo_id} could not be downloaded ({type(e).__name__}: {e}); "
            + _how_to_get(repo_id)) from None
