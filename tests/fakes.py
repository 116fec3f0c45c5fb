"""Test doubles for the scheduler / KV bookkeeping: a fake executor over a simulated physical
KV pool, and the replay loop that drives a scheduler the way the replay driver does.

The fake pool records, for each device and host block, what it holds: the *identity* of the
tokens whose KV a full block stores (a block's KV depends on every token before it, so the
identity is the whole prefix up to the block's end), or a marker for a partly written block.
Identities come from the request data directly (`position_ids`), independently of the KV
managers' own content keys, so tests can compare the managers' claims against them.
`draw_prompt` draws the prompts (shared prefixes, token ids or block hashes) of the property
tests' workloads.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from hypothesis import strategies as st

from testbed.plan import StepPlan, StepResult
from testbed.request import Sequence

DOCS = [[100 + 50 * d + t for t in range(64)] for d in range(3)]  # shared token streams
DOC_HASHES = [[10_000 * (d + 1) + q for q in range(64)] for d in range(3)]


def draw_prompt(draw, i: int, kind: str, hash_block: int, trim_hashes: bool = False):
    """(prompt_len, token ids, block hashes) of request `i`'s prompt: a drawn prefix of one of
    three shared documents, then tokens of its own. `kind` "tokens" gives token ids,
    "hashes" block hashes of `hash_block` tokens (with `trim_hashes` maybe one short of the
    prompt, as a trace's last partial block may lack one), "none" neither."""
    prompt_len = draw(st.integers(1, 40))
    shared = draw(st.integers(0, prompt_len))
    doc = draw(st.integers(0, 2))
    tokens = hashes = None
    if kind == "tokens":
        tokens = DOCS[doc][:shared] + [5000 + 100 * i + t for t in range(prompt_len - shared)]
    elif kind == "hashes":
        num_hashes = -(-prompt_len // hash_block)
        own = [1_000_000 + 1000 * i + q for q in range(num_hashes)]
        k = shared // hash_block
        missing = draw(st.integers(0, 1)) if trim_hashes else 0
        hashes = (DOC_HASHES[doc][:k] + own[k:])[:num_hashes - missing]
    return prompt_len, tokens, hashes


def position_ids(seq: Sequence) -> list:
    """What each position of prompt + output is, as far as KV equality goes: the token id when
    the prompt has tokens; (hash block size, hash id, offset) for prompt positions a trace block
    hash covers (a hash names a fixed token block); otherwise something unique to the request."""
    req = seq.request
    rid = req.request_id
    if req.prompt_token_ids is not None:
        return list(req.prompt_token_ids) + list(seq.output_token_ids)
    h, hashes = req.hash_block_size, req.block_hashes or []
    ids: list = []
    for j in range(req.prompt_len):
        q = j // h if h else len(hashes)
        ids.append(("hash", h, hashes[q], j % h) if q < len(hashes) else ("prompt", rid, j))
    ids += [("output", rid, k) for k in range(seq.num_output_tokens)]
    return ids


def block_identity(seq: Sequence, index: int, block_size: int) -> tuple:
    """What full block `index` of `seq` must hold: the identity of every token up to its end."""
    return tuple(position_ids(seq)[:(index + 1) * block_size])


def unique_tokens(seq: Sequence) -> int:
    """A deterministic next token that differs between requests (never below 1000)."""
    return 1000 + (seq.seq_id * 7919 + seq.num_output_tokens * 31) % 50_000


def shared_tokens(seq: Sequence) -> int:
    """The same output stream for every request (like greedy decoding of equal prompts)."""
    return 1000 + seq.num_output_tokens


@dataclass
class FakeExecutor:
    block_size: int
    next_token: Callable[[Sequence], int] = unique_tokens
    seconds_per_step: float = 0.01
    device: dict = field(default_factory=dict)  # device block -> identity or ("partial", seq_id, index)
    host: dict = field(default_factory=dict)

    def execute(self, plan: StepPlan) -> StepResult:
        self.copy_blocks(plan)
        return self.run_model(plan)

    def copy_blocks(self, plan: StepPlan) -> None:
        """The plan's swaps, in the executor's order: every swap-out, then every swap-in."""
        for dev, host in plan.swap_out:
            self.host[host] = self.device.get(dev)
        for host, dev in plan.swap_in:
            self.device[dev] = self.host.get(host)

    def run_model(self, plan: StepPlan) -> StepResult:
        """Write the KV of every scheduled token and sample where the plan says so."""
        B = self.block_size
        tokens = {}
        for item in plan.scheduled:
            seq, start = item.seq, item.seq.num_computed_tokens
            end = start + item.num_new_tokens
            for i in range(start // B, -(-end // B)):
                block = seq.block_table[i]
                full = (i + 1) * B <= end
                self.device[block] = block_identity(seq, i, B) if full else ("partial", seq.seq_id, i)
            if item.samples:
                tokens[seq.seq_id] = self.next_token(seq)
        return StepResult(tokens, self.seconds_per_step + 1e-4 * plan.num_batched_tokens)
