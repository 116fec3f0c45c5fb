"""Content keys of full KV blocks: equal keys mean equal tokens, hence equal KV entries.

Block `i` of a sequence covers positions `[i*B, (i+1)*B)` of prompt + output. Its key is
- its tokens, when the request carries `prompt_token_ids` (generated tokens included);
- else derived from the trace's `block_hashes` (one id per `hash_block_size` prompt tokens,
  Mooncake style): when B divides the hash block size, (hash id, sub-block index); when the
  hash block size divides B, the hash ids the block covers;
- else (generated tokens, prompt beyond the hashes, or no hashes at all; or a block whose last
  token is not read back from the device yet) a key unique to the request, so the request can
  still reuse its own blocks after a preemption but never shares.

The real engine runs on tokens synthesized from the hashes (same hash, same tokens), so both
kinds of key hit the very same blocks. Tagged tuples keep the three kinds apart.
"""
from __future__ import annotations

from collections.abc import Hashable

from testbed.request import Request, Sequence

NO_BLOCK = 1 << 62  # a block position past any sequence's blocks


def check_block_hashes(request: Request, block_size: int) -> None:
    """Raise ValueError when `request.block_hashes` cannot be mapped onto KV blocks of `block_size`."""
    if request.block_hashes is None or request.prompt_token_ids is not None:
        return
    h = request.hash_block_size
    if h < 1:
        raise ValueError(
            f"request {request.request_id!r}: block_hashes given but hash_block_size is {h}")
    if h % block_size and block_size % h:
        raise ValueError(
            f"request {request.request_id!r}: KV block size {block_size} and hash block size {h} "
            f"do not divide one another, so trace block hashes cannot identify KV blocks")


def block_content_key(seq: Sequence, index: int, block_size: int) -> Hashable:
    """The content key of full block `index` of `seq` (see the module docstring)."""
    req = seq.request
    start, end = index * block_size, (index + 1) * block_size
    p = req.prompt_len
    tokens = req.prompt_token_ids
    if tokens is not None:
        if end <= p:
            return tuple(tokens[start:end])
        out = seq.output_token_ids
        block = tuple(out[start - p:end - p]) if start >= p else tuple(tokens[start:]) + tuple(out[:end - p])
        if block[-1] >= 0:
            return block
        # The block ends with a token still on the device (the engine's overlapped step):
        # its content is unknown here, so it must not be shared.
    hashes = req.block_hashes
    if hashes and end <= p:
        h = req.hash_block_size
        if h % block_size == 0:
            j = start // h
            if j < len(hashes):
                return ("hash", h, hashes[j], (start % h) // block_size)
        else:
            lo, hi = start // h, end // h
            if hi <= len(hashes):
                return ("hash", h, *hashes[lo:hi])
    return ("request", req.request_id, index)


def block_content_keys(seq: Sequence, start: int, stop: int, block_size: int) -> list[Hashable]:
    """`block_content_key` of blocks `start` to `stop` - 1 of `seq`, keys unique to the request
    built in bulk (a sequence's generated blocks, a whole prompt without hashes)."""
    req = seq.request
    if req.prompt_token_ids is not None:
        return [block_content_key(seq, i, block_size) for i in range(start, stop)]
    hashed = min(stop, _num_hashed_blocks(req, block_size))
    keys = [block_content_key(seq, i, block_size) for i in range(start, hashed)]
    request_id = req.request_id
    keys.extend([("request", request_id, i) for i in range(max(start, hashed), stop)])
    return keys


def first_private_block(request: Request, block_size: int) -> int:
    """The first block from which on every key is unique to the request (private: only the
    request itself can ever hit it): the block after its hashed ones for a request without
    token ids. A request with token ids shares blocks by content, so it has none (`NO_BLOCK`)."""
    if request.prompt_token_ids is not None:
        return NO_BLOCK
    return _num_hashed_blocks(request, block_size)


def _num_hashed_blocks(request: Request, block_size: int) -> int:
    """How many leading blocks of a request without token ids have keys from its block hashes."""
    hashes, h = request.block_hashes, request.hash_block_size
    if not hashes:
        return 0
    covered = len(hashes) * (h // block_size) if h % block_size == 0 else len(hashes) // (block_size // h)
    return min(request.prompt_len // block_size, covered)
