"""Weight loading from Hugging Face directories, the hub (offline path) and dummy weights,
checked against the state dict transformers saves."""
import json
import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from testbed.model.config import named_config
from testbed.weights import HubUnavailableError, LoadedModel, load_model, load_tokenizer
from testbed.weights.layout import expected_shapes


def save_tiny_qwen2(path: Path, *, tied: bool, max_shard_size: str | None = None,
                    torch_dtype: torch.dtype = torch.float32) -> dict[str, np.ndarray]:
    """A random 2-layer GQA Qwen2 saved with save_pretrained; returns its state dict."""
    torch.manual_seed(0)
    config = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=96,
                         max_position_embeddings=128, tie_word_embeddings=tied)
    model = Qwen2ForCausalLM(config).to(torch_dtype)
    model.generation_config.eos_token_id = [5, 7]
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, **kwargs)
    return {k: v.float().numpy() for k, v in model.state_dict().items()}


def assert_matches_state_dict(loaded: LoadedModel, state: dict[str, np.ndarray]) -> None:
    assert set(loaded.weights) == set(expected_shapes(loaded.config))
    for name, array in loaded.weights.items():
        np.testing.assert_array_equal(np.array(array.astype(mx.float32)), state[name], err_msg=name)


@pytest.mark.parametrize("tied", [True, False])
def test_single_file_equals_state_dict(tmp_path, tied):
    state = save_tiny_qwen2(tmp_path, tied=tied)
    loaded = load_model(str(tmp_path))
    assert loaded.config.tie_word_embeddings is tied
    assert ("lm_head.weight" in loaded.weights) is not tied
    assert (loaded.config.hidden_size, loaded.config.num_key_value_heads) == (32, 2)
    assert_matches_state_dict(loaded, state)
    assert loaded.tokenizer is None
    assert loaded.eos_token_ids == (5, 7)
    assert loaded.source == f"HF dir {tmp_path}"


@pytest.mark.parametrize("tied", [True, False])
def test_sharded_equals_state_dict(tmp_path, tied):
    state = save_tiny_qwen2(tmp_path, tied=tied, max_shard_size="20KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    assert_matches_state_dict(load_model(str(tmp_path)), state)


def test_bfloat16_checkpoint_loads_in_each_dtype(tmp_path):
    state = save_tiny_qwen2(tmp_path, tied=False, torch_dtype=torch.bfloat16)
    as_f32 = load_model(str(tmp_path), dtype="float32")
    assert_matches_state_dict(as_f32, state)  # bf16 -> f32 is exact
    as_bf16 = load_model(str(tmp_path), dtype="bfloat16")
    assert all(w.dtype == mx.bfloat16 for w in as_bf16.weights.values())
    assert_matches_state_dict(as_bf16, state)


def test_unknown_dtype(tmp_path):
    save_tiny_qwen2(tmp_path, tied=True)
    with pytest.raises(ValueError, match="int8.*float32, float16, bfloat16"):
        load_model(str(tmp_path), dtype="int8")


def test_missing_shard_names_the_file(tmp_path):
    save_tiny_qwen2(tmp_path, tied=False, max_shard_size="20KB")
    shard = sorted(tmp_path.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(ValueError, match=rf"{shard.name}: shard listed in model.safetensors.index.json is missing"):
        load_model(str(tmp_path))


def test_index_entry_absent_from_its_shard(tmp_path):
    save_tiny_qwen2(tmp_path, tied=False, max_shard_size="20KB")
    index_path = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["model.layers.0.extra.weight"] = index["weight_map"]["model.norm.weight"]
    index_path.write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"tensor model\.layers\.0\.extra\.weight listed in "
                                         r"model\.safetensors\.index\.json is not in this shard"):
        load_model(str(tmp_path))


def test_missing_tensor_is_named(tmp_path):
    save_tiny_qwen2(tmp_path, tied=False)
    tensors = mx.load(str(tmp_path / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    mx.save_safetensors(str(tmp_path / "model.safetensors"), tensors)
    with pytest.raises(ValueError, match=r"missing tensor\(s\) model\.layers\.1\.mlp\.up_proj\.weight"):
        load_model(str(tmp_path))


def test_untied_config_needs_lm_head(tmp_path):
    save_tiny_qwen2(tmp_path, tied=True)
    config = json.loads((tmp_path / "config.json").read_text())
    config["tie_word_embeddings"] = False
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"missing tensor\(s\) lm_head\.weight"):
        load_model(str(tmp_path))


def test_shape_mismatch_names_tensor_and_both_shapes(tmp_path):
    save_tiny_qwen2(tmp_path, tied=True)
    config = json.loads((tmp_path / "config.json").read_text())
    config["intermediate_size"] = 48
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor model\.layers\.0\.mlp\.gate_proj\.weight "
                                         r"has shape \(64, 32\), but the config implies \(48, 32\)"):
        load_model(str(tmp_path))


def test_extra_tensors_are_ignored(tmp_path):
    state = save_tiny_qwen2(tmp_path, tied=True)
    tensors = mx.load(str(tmp_path / "model.safetensors"))
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = mx.ones((4,))
    mx.save_safetensors(str(tmp_path / "model.safetensors"), tensors)
    assert_matches_state_dict(load_model(str(tmp_path)), state)


def test_wrong_architecture_names_config(tmp_path):
    save_tiny_qwen2(tmp_path, tied=True)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(model_type="llama", architectures=["LlamaForCausalLM"])
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config\.json: architecture .*LlamaForCausalLM.* is not Qwen2"):
        load_model(str(tmp_path))


def test_directory_without_config_or_weights(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        load_model(str(tmp_path))
    save_tiny_qwen2(tmp_path, tied=True)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="neither model.safetensors nor model.safetensors.index.json"):
        load_model(str(tmp_path))


def test_unrecognized_spec():
    with pytest.raises(ValueError, match="neither a directory, a .gguf file"):
        load_model("no-such-dir")


def test_offline_hub_error_says_how_to_get_files(tmp_path):
    """HF_HUB_OFFLINE with an empty cache: a clear error, at once, with no network use."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_CACHE", None)
    code = ("from testbed.weights import load_model\n"
            "try:\n    load_model('Qwen/Qwen2.5-0.5B-Instruct')\n"
            "except ValueError as e:\n    print(type(e).__name__, e)\n")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=120)
    out = result.stdout
    assert result.returncode == 0, result.stderr
    assert out.startswith(HubUnavailableError.__name__)
    assert "Qwen/Qwen2.5-0.5B-Instruct is not in the local cache and HF_HUB_OFFLINE is set" in out
    assert "hf download Qwen/Qwen2.5-0.5B-Instruct --include 'config.json'" in out
    assert "dummy:<name>" in out


def test_hub_repo_served_from_cache(tmp_path):
    """A repo id already in the hub cache loads offline, from its snapshot directory."""
    snapshot = tmp_path / "hf" / "hub" / "models--acme--tiny-qwen2" / "snapshots" / ("ab" * 20)
    state = save_tiny_qwen2(snapshot, tied=False)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("ab" * 20)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_CACHE", None)
    code = ("import numpy as np\nfrom testbed.weights import load_model\n"
            "m = load_model('acme/tiny-qwen2')\n"
            "np.savez(%r, **{k: np.array(v) for k, v in m.weights.items()})\nprint(m.source)\n"
            % str(tmp_path / "loaded.npz"))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"HF dir {snapshot}"
    loaded = np.load(tmp_path / "loaded.npz")
    assert set(loaded.files) == set(state) and all(np.array_equal(loaded[k], state[k]) for k in state)


def test_dummy_weights():
    loaded = load_model("dummy:qwen2-small", dtype="bfloat16")
    config = named_config("qwen2-small")
    assert loaded.config == config and loaded.source == "dummy qwen2-small"
    shapes = expected_shapes(config)
    assert {k: tuple(v.shape) for k, v in loaded.weights.items()} == shapes
    assert all(v.dtype == mx.bfloat16 for v in loaded.weights.values())
    np.testing.assert_array_equal(np.array(loaded.weights["model.norm.weight"].astype(mx.float32)), 1.0)
    embed = np.array(loaded.weights["model.embed_tokens.weight"].astype(mx.float32))
    assert abs(embed.std() - 0.02) < 0.001 and abs(embed.mean()) < 0.001
    up0 = loaded.weights["model.layers.0.mlp.up_proj.weight"]
    up1 = loaded.weights["model.layers.1.mlp.up_proj.weight"]
    assert not mx.array_equal(up0, up1)
    again = load_model("dummy:qwen2-small", dtype="bfloat16")
    assert all(mx.array_equal(again.weights[k], v) for k, v in loaded.weights.items())


def test_dummy_tokenizer_is_byte_level():
    loaded = load_model("dummy:qwen2-tiny")
    tok = loaded.tokenizer
    text = "héllo, 世界 😀\n"
    assert tok.encode(text) == list(text.encode("utf-8"))
    assert tok.decode(tok.encode(text)) == text
    assert loaded.eos_token_ids == tok.eos_token_ids == (256,)
    assert tok.decode([256]) == "<|endoftext|>" and tok.decode([256], skip_special_tokens=True) == ""
    assert tok.vocab_size == named_config("qwen2-tiny").vocab_size
    assert tok.decode([104, 300, 105]) == "h<|unused_300|>i"
    assert load_tokenizer("dummy:qwen2-tiny").encode(text) == tok.encode(text)


def test_unknown_dummy_lists_known_names():
    with pytest.raises(ValueError, match=r"unknown model config 'qwen9'; known: .*qwen2-0\.5b.*qwen2-tiny"):
        load_model("dummy:qwen9")
