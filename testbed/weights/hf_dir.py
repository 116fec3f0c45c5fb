"""Load a Hugging Face Qwen2 checkpoint directory: config.json, safetensors (one file or
shards with an index), tokenizer files and generation_config.json."""
from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx

from testbed.model.config import ModelConfig
from testbed.tokenizer import Tokenizer, tokenizer_from_hf_dir
from testbed.weights.layout import check_shapes, expected_shapes
from testbed.weights.loaded import LoadedModel, mlx_dtype

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def _load_safetensors(path: Path) -> dict[str, mx.array]:
    try:
        return mx.load(str(path), format="safetensors")
    except Exception as e:  # mlx raises RuntimeError/ValueError with varying messages
        raise ValueError(f"{path}: cannot be read as safetensors ({e})") from None


def load_safetensors_dir(path: Path) -> tuple[dict[str, mx.array], dict[str, str]]:
    """All tensors of the checkpoint and, for each, the file it came from.

    With an index every listed shard must exist and hold the tensors the index assigns it.
    """
    index_path = path / INDEX_FILE
    if index_path.is_file():
        weight_map = _read_json(index_path).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index_path}: has no 'weight_map' object")
        tensors, where = {}, {}
        for shard in sorted(set(weight_map.values())):
            shard_path = path / shard
            if not shard_path.is_file():
                held = [name for name, f in weight_map.items() if f == shard]
                raise ValueError(f"{shard_path}: shard listed in {INDEX_FILE} is missing "
                                 f"(it holds {len(held)} tensor(s), e.g. {held[0]})")
            loaded = _load_safetensors(shard_path)
            for name, f in weight_map.items():
                if f == shard and name not in loaded:
                    raise ValueError(f"{shard_path}: tensor {name} listed in {INDEX_FILE} "
                                     f"is not in this shard")
            tensors.update(loaded)
            where.update({name: str(shard_path) for name in loaded})
        return tensors, where
    single = path / SINGLE_FILE
    if single.is_file():
        tensors = _load_safetensors(single)
        return tensors, {name: str(single) for name in tensors}
    raise ValueError(f"{path}: has neither {SINGLE_FILE} nor {INDEX_FILE}")


def _generation_config(path: Path) -> dict:
    gen_path = path / "generation_config.json"
    return _read_json(gen_path) if gen_path.is_file() else {}


def _eos_ids(generation_config: dict, raw_config: dict) -> list[int]:
    """generation_config.json's eos_token_id (int or list), else config.json's."""
    value = generation_config.get("eos_token_id", raw_config.get("eos_token_id"))
    if value is None:
        return []
    return [value] if isinstance(value, int) else list(value)


def load_hf_tokenizer(path: str | Path) -> Tokenizer | None:
    """The directory's tokenizer (None without tokenizer.json), ending on the eos ids of
    generation_config.json as well as the tokenizer's own eos_token."""
    path = Path(path)
    config_path = path / "config.json"
    raw_config = _read_json(config_path) if config_path.is_file() else {}
    return tokenizer_from_hf_dir(path, _eos_ids(_generation_config(path), raw_config))


def load_hf_dir(path: str | Path, dtype: str = "float32") -> LoadedModel:
    """Load a local Hugging Face checkpoint directory; errors name the file and tensor."""
    path = Path(path)
    target = mlx_dtype(dtype)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{path}: no config.json (not a Hugging Face model directory)")
    raw_config = _read_json(config_path)
    raw_config.setdefault("_name_or_path", path.name)
    config = ModelConfig.from_hf_dict(raw_config, str(config_path))

    tensors, where = load_safetensors_dir(path)
    check_shapes({name: t.shape for name, t in tensors.items()}, config, str(path), where)
    weights = {name: tensors[name].astype(target) for name in expected_shapes(config)}
    mx.eval(weights)

    generation_config = _generation_config(path)
    eos = _eos_ids(generation_config, raw_config)
    tokenizer = tokenizer_from_hf_dir(path, eos)
    return LoadedModel(config, weights, tokenizer,
                       tokenizer.eos_token_ids if tokenizer else tuple(dict.fromkeys(eos)),
                       f"HF dir {path}", generation_config)
