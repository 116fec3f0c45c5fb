"""The shape of one engine step, as numbers a cost model can price.

`step_features(plan)` reads a `StepPlan` *before* the step runs (each scheduled sequence's
`num_computed_tokens` is still the offset of its new tokens). It runs once per simulated step,
so it is a single pass over the scheduled sequences with plain integer arithmetic.

Decode or prefill: a scheduled sequence is a **decode** when it computes exactly one token and
that token is the last one of a sequence whose prompt is already computed (so it samples the
next token). Everything else is a **prefill chunk**: any chunk of more than one token, any part
of a prompt (even a single-token chunk), and the recomputation of generated tokens after a
preemption. A chunk of `c` tokens at offset `o` computes positions `[o, o + c)`; its token at
position `p` attends to `p + 1` keys (causal), so the chunk covers
`sum(o + j for j in 1..c) = c * (o + (c + 1) / 2)` query-key pairs. A decode token at offset `o`
attends to its context of `o + 1` keys (its own included): the same formula with `c = 1`.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from testbed.plan import StepPlan


@dataclass(slots=True)
class StepFeatures:
    """Counts over one step's scheduled sequences (see the module docstring for the terms)."""

    n_seqs: int = 0  # scheduled sequences
    n_prefill_seqs: int = 0  # of them, prefill chunks
    n_prefill_tokens: int = 0  # tokens in prefill chunks
    prefill_attn_work: int = 0  # sum of c * (o + (c + 1) / 2): causal query-key pairs of chunks
    sum_prefill_sq: int = 0  # sum of c^2
    sum_prefill_context: int = 0  # sum of o + c: keys each chunk's attention reads
    n_decode_seqs: int = 0  # decodes (one token each)
    sum_decode_context: int = 0  # sum of o + 1: keys each decode token attends to
    n_samples: int = 0  # sequences that sample a token this step (rows of the LM head)
    n_swap_blocks: int = 0  # KV blocks copied between device and host (in + out)
    n_batched_tokens: int = 0  # all new tokens: n_prefill_tokens + n_decode_seqs

    def as_dict(self) -> dict[str, int]:
        """Feature name -> value, for the step log (`steps.parquet` columns of the same names)."""
        return {name: getattr(self, name) for name in FEATURE_NAMES}


FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in fields(StepFeatures))


def step_features(plan: StepPlan) -> StepFeatures:
    """Features of `plan`, computed before it runs."""
    n_prefill = prefill_tokens = attn_work = prefill_sq = prefill_context = 0
    n_decode = decode_context = n_samples = 0
    for s in plan.scheduled:
        seq, c = s.seq, s.num_new_tokens
        o = seq.num_computed_tokens
        prompt_len = seq.request.prompt_len
        samples = o + c == prompt_len + len(seq.output_token_ids)
        n_samples += samples
        if c == 1 and samples and o >= prompt_len:
            n_decode += 1
            decode_context += o + 1
        else:
            n_prefill += 1
            prefill_tokens += c
            attn_work += c * o + c * (c + 1) // 2
            prefill_sq += c * c
            prefill_context += o + c
    return StepFeatures(
        n_seqs=n_prefill + n_decode, n_prefill_seqs=n_prefill, n_prefill_tokens=prefill_tokens,
        prefill_attn_work=attn_work, sum_prefill_sq=prefill_sq, sum_prefill_context=prefill_context,
        n_decode_seqs=n_decode, sum_decode_context=decode_context, n_samples=n_samples,
        n_swap_blocks=len(plan.swap_in) + len(plan.swap_out),
        n_batched_tokens=prefill_tokens + n_decode)


def decode_features(n_decodes: int, sum_decode_context: int) -> StepFeatures:
    """Features of a step that only decodes: `n_decodes` sequences of one token each,
    attending to `sum_decode_context` keys in all. Equal to `step_features` of such a step."""
    return StepFeatures(n_seqs=n_decodes, n_decode_seqs=n_decodes, sum_decode_context=sum_decode_context,
                        n_samples=n_decodes, n_batched_tokens=n_decodes)
