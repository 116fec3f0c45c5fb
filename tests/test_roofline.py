"""The roofline cost model: FLOPs and bytes against a hand computation for Qwen2-0.5B, and the
orderings any sane cost model must keep."""
import pytest
from hypothesis import given, settings, strategies as st

from testbed.model.config import named_config
from testbed.plan import ScheduledSeq, StepPlan
from testbed.request import Request, Sequence
from testbed.sim import COST_MODELS
from testbed.sim.features import StepFeatures, step_features
from testbed.sim.hardware import HardwareProfile, load_profile, profile_names
from testbed.sim.roofline import RooflineCostModel, swap_seconds_per_block

QWEN2_05B = named_config("qwen2-0.5b")

# Qwen2-0.5B by hand: hidden 896, intermediate 4864, 24 layers, 14 query heads and 2 KV heads
# of head_dim 64 (so K and V are 2 * 64 = 128 wide), vocab 151936, LM head tied to the
# embedding (one table in memory, but still a matmul for every sampled row). bf16: 2 bytes.
LINEAR_WEIGHTS_PER_LAYER = (
    896 * 896  # q_proj
    + 896 * 128  # k_proj
    + 896 * 128  # v_proj
    + 896 * 896  # o_proj
    + 3 * 896 * 4864  # gate_proj, up_proj, down_proj
)
LINEAR_WEIGHTS = 24 * LINEAR_WEIGHTS_PER_LAYER
LM_HEAD_WEIGHTS = 151936 * 896
ATTN_FLOPS_PER_PAIR = 24 * 14 * (2 * 64 + 2 * 64)  # every layer and query head: q.k, then p.v
KV_BYTES_PER_TOKEN = 24 * 2 * 128 * 2  # every layer: K and V, 128 wide, 2 bytes


def test_hand_constants():
    assert LINEAR_WEIGHTS_PER_LAYER == 14_909_440
    assert LINEAR_WEIGHTS == 357_826_560
    assert LM_HEAD_WEIGHTS == 136_134_656
    assert KV_BYTES_PER_TOKEN == 12_288 == QWEN2_05B.kv_bytes_per_token("bfloat16")


def seq(seq_id, prompt_len, generated=0, computed=0):
    s = Sequence(seq_id, Request(f"r{seq_id}", 0.0, prompt_len, 1000))
    s.output_token_ids = [1] * generated
    s.num_computed_tokens = computed
    return s


ROUND = HardwareProfile("round", {"bfloat16": 100e12}, mem_bandwidth=1e12, mfu=0.5, mbu=0.5,
                        step_overhead_s=1e-3, host_link_bandwidth=10e9, memory_bytes=80e9)


def totals(model, features):
    parts = model.components(features)
    return sum(c.flops for c in parts), sum(c.bytes for c in parts), {c.name: c for c in parts}


def test_decode_step_batch_8_by_hand():
    contexts = [100, 200, 300, 400, 500, 600, 700, 800]  # keys each decode token attends to
    plan = StepPlan([ScheduledSeq(seq(i, c - 10, generated=10, computed=c - 1), 1)
                     for i, c in enumerate(contexts)])
    rf = RooflineCostModel(QWEN2_05B, ROUND, "bfloat16")
    flops, nbytes, parts = totals(rf, step_features(plan))

    linear_flops = 2 * 8 * LINEAR_WEIGHTS  # 8 tokens through every projection
    attn_flops = ATTN_FLOPS_PER_PAIR * 3600  # 3600 query-key pairs in all
    lm_flops = 2 * 8 * LM_HEAD_WEIGHTS  # all 8 sample
    assert flops == linear_flops + attn_flops + lm_flops == 8_213_037_056

    weight_bytes = 2 * (LINEAR_WEIGHTS + LM_HEAD_WEIGHTS)  # each read once per step
    kv_read = KV_BYTES_PER_TOKEN * 3600  # every context token's K and V
    kv_write = KV_BYTES_PER_TOKEN * 8  # the 8 new tokens' K and V
    assert nbytes == weight_bytes + kv_read + kv_write == 1_032_257_536

    # Time: each part on its roofline (50 TFLOP/s, 500 GB/s achieved), plus the 1 ms overhead.
    # Batch 8 is far below the ridge (100 FLOP/byte): every part is bandwidth bound.
    assert all(c.bound == "memory" for c in parts.values() if c.bytes)
    expected = 1e-3 + (2 * LINEAR_WEIGHTS + 2 * LM_HEAD_WEIGHTS + kv_read + kv_write) / 500e9
    assert rf.predict(step_features(plan)) == pytest.approx(expected, rel=1e-12)


def test_prefill_step_one_512_token_chunk_by_hand():
    plan = StepPlan([ScheduledSeq(seq(0, 512), 512)])  # a whole 512-token prompt; it samples
    rf = RooflineCostModel(QWEN2_05B, ROUND, "bfloat16")
    flops, nbytes, parts = totals(rf, step_features(plan))

    pairs = 512 * 513 // 2  # causal: token j attends to j + 1 keys
    linear_flops = 2 * 512 * LINEAR_WEIGHTS
    attn_flops = ATTN_FLOPS_PER_PAIR * pairs
    lm_flops = 2 * 1 * LM_HEAD_WEIGHTS  # only the last row samples
    assert flops == linear_flops + attn_flops + lm_flops == 377_982_976_000

    weight_bytes = 2 * (LINEAR_WEIGHTS + LM_HEAD_WEIGHTS)
    kv_read = KV_BYTES_PER_TOKEN * 512  # K and V of the chunk's 512 keys, read once
    kv_write = KV_BYTES_PER_TOKEN * 512
    assert nbytes == weight_bytes + kv_read + kv_write == 1_000_505_344

    assert parts["linear"].bound == "compute" and parts["prefill_attention"].bound == "compute"
    assert parts["lm_head"].bound == "memory"  # one row: a matrix-vector product
    expected = (1e-3 + (linear_flops + attn_flops) / 50e12
                + 2 * LM_HEAD_WEIGHTS / 500e9)
    assert rf.predict(step_features(plan)) == pytest.approx(expected, rel=1e-12)


def test_middle_chunk_skips_the_lm_head():
    f = step_features(StepPlan([ScheduledSeq(seq(0, 2048, computed=512), 512)]))
    parts = {c.name: c for c in RooflineCostModel(QWEN2_05B, ROUND).components(f)}
    assert parts["lm_head"].flops == 0 and parts["lm_head"].bytes == 0
    assert parts["prefill_attention"].flops == ATTN_FLOPS_PER_PAIR * (512 * 512 + 512 * 513 // 2)


@st.composite
def features(draw):
    n_prefill = draw(st.integers(0, 4))
    n_decode = draw(st.integers(0, 64))
    chunks = [(draw(st.integers(1, 4096)), draw(st.integers(0, 8192))) for _ in range(n_prefill)]
    contexts = [draw(st.integers(1, 32768)) for _ in range(n_decode)]
    tokens = sum(c for c, _ in chunks)
    return StepFeatures(
        n_seqs=n_prefill + n_decode, n_prefill_seqs=n_prefill, n_prefill_tokens=tokens,
        prefill_attn_work=sum(c * o + c * (c + 1) // 2 for c, o in chunks),
        sum_prefill_sq=sum(c * c for c, _ in chunks), sum_prefill_context=sum(c + o for c, o in chunks),
        n_decode_seqs=n_decode, sum_decode_context=sum(contexts),
        n_samples=n_decode + draw(st.integers(0, n_prefill)), n_batched_tokens=tokens + n_decode)


MODELS = [named_config(n) for n in ("qwen2-0.5b", "qwen2.5-7b", "qwen2.5-72b")]


@settings(max_examples=100, deadline=None)
@given(features(), st.sampled_from(MODELS), st.sampled_from(profile_names()),
       st.sampled_from(["n_decode", "context", "chunk", "offset"]))
def test_more_work_never_predicts_less_time(f, model, hw_name, grow):
    rf = RooflineCostModel(model, load_profile(hw_name), "bfloat16")
    more = StepFeatures(**f.as_dict())
    if grow == "n_decode":  # one more decode of context 1000
        more.n_seqs += 1
        more.n_decode_seqs += 1
        more.n_batched_tokens += 1
        more.n_samples += 1
        more.sum_decode_context += 1000
    elif grow == "context":  # every decode's context 100 longer
        more.sum_decode_context += 100 * f.n_decode_seqs
    elif grow == "chunk":  # one more prefill chunk of 256 tokens at offset 0
        more.n_seqs += 1
        more.n_prefill_seqs += 1
        more.n_prefill_tokens += 256
        more.n_batched_tokens += 256
        more.prefill_attn_work += 256 * 257 // 2
        more.sum_prefill_context += 256
    else:  # every chunk 1000 tokens further into its prompt
        more.prefill_attn_work += 1000 * f.n_prefill_tokens
        more.sum_prefill_context += 1000 * f.n_prefill_seqs
    assert rf.predict(more) >= rf.predict(f)


@settings(max_examples=100, deadline=None)
@given(features(), st.sampled_from(MODELS))
def test_h200_never_slower_than_h100(f, model):
    h100 = RooflineCostModel(model, load_profile("h100"))
    h200 = RooflineCostModel(model, load_profile("h200"))
    assert h200.predict(f) <= h100.predict(f)


def test_small_decode_is_bandwidth_bound_and_big_prefill_compute_bound():
    model = named_config("qwen2.5-7b")
    for name in profile_names():
        hw = load_profile(name)
        fastest = max(hw.peak_flops, key=hw.peak_flops.get)  # bf16 on GPUs, fp32 on the CPU
        rf = RooflineCostModel(model, hw, fastest)
        decode = step_features(StepPlan([ScheduledSeq(seq(i, 1000, 24, 1023), 1) for i in range(2)]))
        prefill = step_features(StepPlan([ScheduledSeq(seq(0, 4096), 4096)]))
        assert {c.name: c.bound for c in rf.components(decode)}["linear"] == "memory", name
        assert {c.name: c.bound for c in rf.components(prefill)}["linear"] == "compute", name


def test_tensor_parallel_splits_work_and_adds_an_allreduce():
    model, h100 = named_config("qwen2.5-72b"), load_profile("h100")
    f = step_features(StepPlan([ScheduledSeq(seq(0, 2048), 2048)]))
    one = {c.name: c for c in RooflineCostModel(model, h100).components(f)}
    four = {c.name: c for c in RooflineCostModel(model, h100, tensor_parallel=4).components(f)}
    assert four["linear"].flops == pytest.approx(one["linear"].flops / 4)
    assert four["linear"].bytes == pytest.approx(one["linear"].bytes / 4)
    # Two ring all-reduces per layer of 2048 x 8192 bf16 activations, 2 (4 - 1) / 4 of them each way.
    assert four["allreduce"].bytes == pytest.approx(80 * 2 * 2048 * 8192 * 2 * 1.5)
    assert four["allreduce"].seconds == pytest.approx(four["allreduce"].bytes / 450e9)
    assert (RooflineCostModel(model, h100, tensor_parallel=4).predict(f)
            < RooflineCostModel(model, h100).predict(f))


def test_tensor_parallel_rejects_what_cannot_split():
    model = named_config("qwen2.5-72b")  # 64 query heads, 8 KV heads
    with pytest.raises(ValueError, match="tensor_parallel=3"):
        RooflineCostModel(model, load_profile("h100"), tensor_parallel=3)
    with pytest.raises(ValueError, match="interconnect_bandwidth"):
        RooflineCostModel(model, load_profile("m2_ultra"), tensor_parallel=2)


def test_unknown_dtype_names_the_profile():
    with pytest.raises(ValueError, match="round.*float32"):
        RooflineCostModel(QWEN2_05B, ROUND, "float32")


def test_swap_seconds_per_block():
    # 16 tokens x 12288 bytes over 10 GB/s.
    assert swap_seconds_per_block(QWEN2_05B, ROUND, 16, "bfloat16") == pytest.approx(16 * 12288 / 10e9)


def test_registry_builds_the_roofline():
    rf = COST_MODELS.create("roofline", model=QWEN2_05B, hardware=ROUND, dtype="bfloat16")
    assert isinstance(rf, RooflineCostModel)
    assert "fitted" in COST_MODELS.names()
