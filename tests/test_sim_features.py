"""Step features from hand-built plans, and against a brute-force count of query-key pairs."""
from hypothesis import given, settings, strategies as st

from testbed.plan import ScheduledSeq, StepPlan
from testbed.request import Request, Sequence
from testbed.sim.features import FEATURE_NAMES, StepFeatures, step_features


def seq(seq_id: int, prompt_len: int, generated: int = 0, computed: int = 0) -> Sequence:
    s = Sequence(seq_id, Request(f"r{seq_id}", 0.0, prompt_len, 100))
    s.output_token_ids = [7] * generated
    s.num_computed_tokens = computed
    return s


def test_prefill_chunk_at_an_offset():
    # Tokens 256..383 of a 1000-token prompt: each attends to 257..384 keys.
    f = step_features(StepPlan([ScheduledSeq(seq(0, 1000, computed=256), 128)]))
    assert f.n_prefill_seqs == 1 and f.n_decode_seqs == 0 and f.n_seqs == 1
    assert f.n_prefill_tokens == 128 and f.n_batched_tokens == 128
    assert f.prefill_attn_work == sum(range(257, 385)) == 128 * 256 + 128 * 129 // 2 == 41024
    assert f.sum_prefill_sq == 128 * 128
    assert f.sum_prefill_context == 384
    assert f.n_samples == 0  # the prompt is not finished: no token sampled


def test_decodes_and_a_final_chunk():
    plan = StepPlan([
        ScheduledSeq(seq(0, 100, generated=5, computed=104), 1),  # decode, context 105
        ScheduledSeq(seq(1, 20, generated=1, computed=20), 1),  # first decode, context 21
        ScheduledSeq(seq(2, 300, computed=256), 44),  # last chunk of a prompt: samples
    ])
    f = step_features(plan)
    assert (f.n_seqs, f.n_decode_seqs, f.n_prefill_seqs) == (3, 2, 1)
    assert f.sum_decode_context == 105 + 21
    assert f.n_prefill_tokens == 44 and f.n_batched_tokens == 46
    assert f.prefill_attn_work == sum(range(257, 301))
    assert f.n_samples == 3


def test_single_token_prefill_chunks_are_not_decodes():
    plan = StepPlan([
        ScheduledSeq(seq(0, 257, computed=256), 1),  # last token of a prompt: samples
        ScheduledSeq(seq(1, 1), 1),  # a one-token prompt
        ScheduledSeq(seq(2, 10, generated=5, computed=12), 1),  # recompute, not the last token
    ])
    f = step_features(plan)
    assert f.n_decode_seqs == 0 and f.n_prefill_seqs == 3
    assert f.prefill_attn_work == 257 + 1 + 13
    assert f.n_samples == 2


def test_recompute_after_preemption_is_a_prefill():
    f = step_features(StepPlan([ScheduledSeq(seq(0, 10, generated=5), 15)]))
    assert f.n_prefill_seqs == 1 and f.n_prefill_tokens == 15 and f.n_samples == 1
    assert f.prefill_attn_work == 15 * 16 // 2


def test_swaps_count_in_and_out():
    plan = StepPlan([], swap_out=[(1, 10), (2, 11), (3, 12)], swap_in=[(20, 4), (21, 5)])
    f = step_features(plan)
    assert f.n_swap_blocks == 5
    assert f.n_seqs == 0 and f.n_batched_tokens == 0


def test_as_dict_has_every_feature_by_name():
    f = step_features(StepPlan([ScheduledSeq(seq(0, 50, computed=10), 8)]))
    d = f.as_dict()
    assert tuple(d) == FEATURE_NAMES
    assert d["n_prefill_tokens"] == 8 and d["sum_prefill_sq"] == 64
    assert StepFeatures(**d) == f


@st.composite
def plans(draw):
    scheduled = []
    for i in range(draw(st.integers(0, 12))):
        prompt = draw(st.integers(1, 300))
        generated = draw(st.integers(0, 50))
        total = prompt + generated
        computed = draw(st.integers(0, total - 1))
        new = draw(st.integers(1, total - computed))
        scheduled.append(ScheduledSeq(seq(i, prompt, generated, computed), new))
    return StepPlan(scheduled, swap_out=[(0, 0)] * draw(st.integers(0, 3)))


@settings(max_examples=200, deadline=None)
@given(plans())
def test_features_match_brute_force(plan):
    f = step_features(plan)
    decode_keys = prefill_pairs = prefill_keys = n_decode = 0
    for s in plan.scheduled:
        q = s.seq
        positions = range(q.num_computed_tokens, q.num_computed_tokens + s.num_new_tokens)
        is_decode = (s.num_new_tokens == 1 and q.num_computed_tokens >= q.prompt_len
                     and positions[-1] == q.num_tokens - 1)
        pairs = sum(1 for p in positions for key in range(p + 1))  # causal: keys 0..p
        if is_decode:
            n_decode += 1
            decode_keys += pairs
        else:
            prefill_pairs += pairs
            prefill_keys += positions[-1] + 1
    assert f.n_decode_seqs == n_decode
    assert f.sum_decode_context == decode_keys
    assert f.prefill_attn_work == prefill_pairs
    assert f.sum_prefill_context == prefill_keys
    assert f.n_batched_tokens == plan.num_batched_tokens
    assert f.n_samples == sum(s.samples for s in plan.scheduled)
    assert f.n_prefill_seqs + f.n_decode_seqs == f.n_seqs == len(plan.scheduled)
    assert f.sum_prefill_sq == sum(s.num_new_tokens ** 2 for s in plan.scheduled if not (
        s.num_new_tokens == 1 and s.seq.num_computed_tokens >= s.seq.prompt_len and s.samples))
    assert f.n_swap_blocks == len(plan.swap_out)
