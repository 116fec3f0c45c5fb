"""GGUF loading: our numpy dequantizers against `gguf.quants.dequantize`, and a tiny Qwen2
GGUF written with `gguf.GGUFWriter` (every supported tensor type) loaded through load_model."""
from pathlib import Path

import gguf
import mlx.core as mx
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from testbed.weights import load_model
from testbed.weights.gguf_dequant import SUPPORTED_TYPES, dequantize
from testbed.weights.gguf_file import hf_name
from testbed.weights.layout import expected_shapes

K_TYPES = (Q.Q4_K, Q.Q5_K, Q.Q6_K)
# Byte offsets of the float16 scales in each block type, set to sane values in random blocks.
SCALE_OFFSETS = {Q.Q8_0: [0], Q.Q4_0: [0], Q.Q5_0: [0], Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208]}


def random_raw(qtype: Q, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Valid raw data (rows, bytes per row) of `qtype`: quantized by gguf where it can,
    otherwise random blocks with float16 scales in a realistic range."""
    values = rng.normal(0, 0.05, size=(rows, cols)).astype(np.float32)
    if qtype not in K_TYPES:
        return gguf.quants.quantize(values, qtype)
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(rows * cols // block_elems, block_bytes), dtype=np.uint8)
    for offset in SCALE_OFFSETS[qtype]:
        scales = rng.uniform(1e-4, 2e-2, size=(len(blocks), 1)).astype(np.float16)
        blocks[:, offset:offset + 2] = scales.view(np.uint8)
    return blocks.reshape(rows, -1)


@pytest.mark.parametrize("qtype", SUPPORTED_TYPES, ids=lambda t: t.name)
def test_dequantizer_equals_gguf_reference(qtype):
    rng = np.random.default_rng(int(qtype))
    raw = random_raw(qtype, rows=6, cols=512, rng=rng)
    ours = dequantize(raw, qtype, 6 * 512)
    reference = gguf.quants.dequantize(raw, qtype).reshape(-1)
    np.testing.assert_array_equal(ours, reference)


@pytest.mark.parametrize("qtype", [t for t in SUPPORTED_TYPES if t in SCALE_OFFSETS], ids=lambda t: t.name)
def test_block_dequantizer_on_arbitrary_bytes(qtype):
    """Every bit pattern of the quant bytes (scales kept finite) decodes like the reference."""
    rng = np.random.default_rng(100 + int(qtype))
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(64, block_bytes), dtype=np.uint8)
    for offset in SCALE_OFFSETS[qtype]:
        blocks[:, offset:offset + 2] = rng.uniform(-1, 1, (64, 1)).astype(np.float16).view(np.uint8)
    np.testing.assert_array_equal(dequantize(blocks, qtype, 64 * block_elems),
                                  gguf.quants.dequantize(blocks, qtype).reshape(-1))


def test_dequantize_rejects_wrong_sizes_and_types():
    raw = np.zeros((2, 34), np.uint8)
    with pytest.raises(ValueError, match="blk.0.x: Q8_0 data has 68 bytes, expected 34 for 32 elements"):
        dequantize(raw, Q.Q8_0, 32, "blk.0.x")
    with pytest.raises(ValueError, match="not a multiple of the Q4_K block size 256"):
        dequantize(raw, Q.Q4_K, 100, "t")
    with pytest.raises(ValueError, match="t: tensor type Q2_K is not supported"):
        dequantize(raw, Q.Q2_K, 256, "t")


# A tiny Qwen2: K-quant rows need a multiple of 256 inputs.
HIDDEN, INTER, LAYERS, HEADS, KV_HEADS = 256, 512, 2, 4, 2
TOKENS = ([chr(c) for c in range(ord("!"), ord("!") + 200)] + ['!"']
          + ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
TYPES_BY_LAYER = [
    {"attn_q": Q.Q4_K, "attn_k": Q.Q5_K, "attn_v": Q.Q6_K, "attn_output": Q.Q8_0,
     "ffn_gate": Q.Q4_0, "ffn_up": Q.Q5_0, "ffn_down": Q.BF16},
    {"attn_q": Q.F16, "attn_k": Q.Q8_0, "attn_v": Q.Q5_0, "attn_output": Q.Q4_K,
     "ffn_gate": Q.Q5_K, "ffn_up": Q.Q6_K, "ffn_down": Q.Q4_0},
]


def gguf_tensors(tied: bool, rng: np.random.Generator) -> dict[str, tuple[np.ndarray, Q]]:
    """GGUF name -> (data as written, type): float arrays for F32/F16, raw bytes otherwise."""
    vocab, kv = len(TOKENS), KV_HEADS * HIDDEN // HEADS
    tensors = {"token_embd.weight": (random_raw(Q.Q5_0, vocab, HIDDEN, rng), Q.Q5_0),
               "output_norm.weight": (rng.normal(1, 0.1, HIDDEN).astype(np.float32), Q.F32)}
    if not tied:
        tensors["output.weight"] = (random_raw(Q.Q6_K, vocab, HIDDEN, rng), Q.Q6_K)
    out_in = {"attn_q": (HIDDEN, HIDDEN), "attn_k": (kv, HIDDEN), "attn_v": (kv, HIDDEN),
              "attn_output": (HIDDEN, HIDDEN), "ffn_gate": (INTER, HIDDEN),
              "ffn_up": (INTER, HIDDEN), "ffn_down": (HIDDEN, INTER)}
    for layer, types in enumerate(TYPES_BY_LAYER):
        p = f"blk.{layer}."
        for kind, qtype in types.items():
            rows, cols = out_in[kind]
            if qtype == Q.F16:
                data = rng.normal(0, 0.05, (rows, cols)).astype(np.float16)
            else:
                data = random_raw(qtype, rows, cols, rng)
            tensors[p + kind + ".weight"] = (data, qtype)
        for kind, size in (("attn_q", HIDDEN), ("attn_k", kv), ("attn_v", kv)):
            tensors[p + kind + ".bias"] = (rng.normal(0, 0.1, size).astype(np.float32), Q.F32)
        for kind in ("attn_norm", "ffn_norm"):
            tensors[p + kind + ".weight"] = (rng.normal(1, 0.1, HIDDEN).astype(np.float32), Q.F32)
    return tensors


def write_gguf(path: Path, tensors: dict[str, tuple[np.ndarray, Q]], arch: str = "qwen2",
               merges: tuple[str, ...] = ('! "',)) -> Path:
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(LAYERS)
    writer.add_context_length(4096)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(INTER)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(TOKENS)
    writer.add_token_types([1] * 201 + [3, 3, 3])
    writer.add_token_merges(merges)
    writer.add_eos_token_id(203)
    writer.add_pad_token_id(201)
    writer.add_chat_template("{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}")
    for name, (data, qtype) in tensors.items():
        if qtype in (Q.F32, Q.F16):
            writer.add_tensor(name, data)
        else:
            writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def tiny_gguf(request, tmp_path_factory) -> tuple[Path, dict, bool]:
    tied = request.param
    tensors = gguf_tensors(tied, np.random.default_rng(7))
    path = write_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", tensors)
    return path, tensors, tied


def test_config_from_metadata(tiny_gguf):
    path, _, tied = tiny_gguf
    cfg = load_model(str(path)).config
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers) == (HIDDEN, INTER, LAYERS)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (HEADS, KV_HEADS)
    assert cfg.vocab_size == len(TOKENS) and cfg.tie_word_embeddings is tied
    assert (cfg.rope_theta, cfg.rms_norm_eps, cfg.max_position_embeddings) == (10000.0, 1e-5, 4096)


def test_weights_equal_reference_dequantization(tiny_gguf):
    path, written, tied = tiny_gguf
    loaded = load_model(str(path))
    assert set(loaded.weights) == set(expected_shapes(loaded.config))
    assert ("lm_head.weight" in loaded.weights) is not tied
    assert loaded.source == f"GGUF file {path} (Q4_K_M)"
    for t in gguf.GGUFReader(path).tensors:
        ours = np.array(loaded.weights[hf_name(t.name)])
        reference = gguf.quants.dequantize(t.data, t.tensor_type)
        np.testing.assert_array_equal(ours, reference, err_msg=t.name)
        if t.tensor_type in (Q.F32, Q.F16):  # and exactly what was written, in [out, in]
            np.testing.assert_array_equal(ours, written[t.name][0].astype(np.float32))


def test_requested_dtype(tiny_gguf):
    path, _, _ = tiny_gguf
    loaded = load_model(str(path), dtype="float16")
    assert all(w.dtype == mx.float16 for w in loaded.weights.values())


def test_tokenizer_and_eos_from_metadata(tiny_gguf):
    path, _, _ = tiny_gguf
    loaded = load_model(str(path))
    tok = loaded.tokenizer
    assert loaded.eos_token_ids == (203, 201)  # eos, then <|endoftext|> as Qwen2 ends on both
    assert loaded.generation_config == {"eos_token_id": 203, "pad_token_id": 201}
    assert tok.encode("!\"#<|im_end|>") == [200, 2, 203]
    assert tok.apply_chat_template([{"role": "user", "content": "!"}]) == "<|im_start|>!<|im_end|>"


def test_wrong_architecture(tmp_path):
    path = write_gguf(tmp_path / "llama.gguf", {}, arch="llama")
    with pytest.raises(ValueError, match=r"llama\.gguf: general\.architecture is 'llama'; only 'qwen2'"):
        load_model(str(path))


def test_missing_tensor(tmp_path):
    tensors = gguf_tensors(False, np.random.default_rng(1))
    del tensors["blk.1.ffn_up.weight"]
    path = write_gguf(tmp_path / "partial.gguf", tensors)
    with pytest.raises(ValueError, match=r"partial\.gguf: missing tensor\(s\) model\.layers\.1\.mlp\.up_proj\.weight"):
        load_model(str(path))


def test_unsupported_tensor_type(tmp_path):
    tensors = gguf_tensors(True, np.random.default_rng(2))
    q2k = np.zeros((HIDDEN, HIDDEN // 256 * gguf.GGML_QUANT_SIZES[Q.Q2_K][1]), np.uint8)
    tensors["blk.0.attn_q.weight"] = (q2k, Q.Q2_K)
    path = write_gguf(tmp_path / "q2k.gguf", tensors)
    with pytest.raises(ValueError, match=r"tensor blk\.0\.attn_q\.weight: tensor type Q2_K is not supported"):
        load_model(str(path))


def test_merge_of_unknown_tokens(tmp_path):
    path = write_gguf(tmp_path / "merges.gguf", gguf_tensors(True, np.random.default_rng(3)),
                      merges=("! zz",))
    with pytest.raises(ValueError, match=r"merges\.gguf: tokenizer\.ggml\.merges do not fit the tokens"):
        load_model(str(path))


def test_not_a_gguf_file(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError, match="bad.gguf: cannot be read as GGUF"):
        load_model(str(bad))
    with pytest.raises(ValueError, match="absent.gguf: no such GGUF file"):
        load_model(str(tmp_path / "absent.gguf"))
