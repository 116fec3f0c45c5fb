"""Prefix caching on top of paged blocks: full, computed blocks are indexed by content so
that sequences starting with the same tokens share them, and unused cached blocks stay
resident until an eviction policy picks them.

`CachingKVManager` holds what both index shapes share: per-sequence block keys, the commit
of newly full blocks, reference counts and eviction. Subclasses say how the index is
organised (`_find`, `_insert`, `_remove`) and which unused blocks may be evicted.
"""
from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

from testbed.kv.block import Block
from testbed.kv.block_keys import block_content_key, check_block_hashes
from testbed.kv.eviction import Evictor
from testbed.kv.paged import PagedKVManager
from testbed.request import Sequence


@dataclass(slots=True)
class _SeqKeys:
    """Index keys of one sequence's leading full blocks (computed lazily, kept while it lives)
    and how many of its blocks are committed (in the index, or replaced by an indexed twin)."""

    keys: list = field(default_factory=list)
    committed: int = 0


class CachingKVManager(PagedKVManager):
    _root: Block | None = None  # the parent passed for block 0

    def __init__(self, num_blocks: int, block_size: int = 16, num_host_blocks: int = 0,
                 eviction: str = "lru"):
        super().__init__(num_blocks, block_size, num_host_blocks)
        self.evictor = Evictor(eviction)
        self._seqs: dict[int, _SeqKeys] = {}

    def can_ever_fit(self, seq: Sequence) -> str | None:
        check_block_hashes(seq.request, self.block_size)
        return super().can_ever_fit(seq)

    def cached_blocks(self) -> set[int]:
        """Ids of the blocks in the index now (in use or evictable)."""
        return {b.block_id for b in self.blocks if b.key is not None}

    def commit(self, seq: Sequence) -> None:
        state = self._seqs[seq.seq_id]
        full = seq.num_computed_tokens // self.block_size
        if full <= state.committed:
            return
        blocks, table = self.blocks, seq.block_table
        parent = blocks[table[state.committed - 1]] if state.committed else self._root
        for i in range(state.committed, full):
            key = self._key(seq, state, i)
            block = blocks[table[i]]
            twin = self._find(parent, key)
            if twin is None:
                self._insert(block, parent, key)
            elif twin is not block:  # computed twice (e.g. by two sequences at once): keep one copy
                self._acquire(twin)
                table[i] = twin.block_id
                self._release(block)
                block = twin
            parent = block
        state.committed = full

    # -- hooks of PagedKVManager -------------------------------------------------------------

    def _match(self, seq: Sequence) -> list[Block]:
        state = self._state(seq)
        hits: list[Block] = []
        node = self._root
        for i in range((seq.num_tokens - 1) // self.block_size):
            node = self._find(node, self._key(seq, state, i))
            if node is None:
                break
            hits.append(node)
        return hits

    def _acquire(self, block: Block) -> None:
        if block.ref_count == 0:
            self.evictor.discard(block)
        super()._acquire(block)

    def _take_block(self) -> Block:
        if self._free:
            return self.blocks[self._free.pop()]
        block = self.evictor.pop()
        self._remove(block)
        block.key = None
        self.stats.evicted_blocks += 1
        return block

    def _on_unused(self, block: Block) -> None:
        if block.key is None:
            self._free.append(block.block_id)
        elif self._evictable(block):
            self.evictor.add(block)

    def _on_admitted(self, seq: Sequence, num_cached_blocks: int) -> None:
        self._seqs[seq.seq_id].committed = num_cached_blocks

    def _on_swapped_in(self, seq: Sequence) -> None:
        self._seqs[seq.seq_id].committed = 0  # fresh blocks: the next commit indexes or dedups them

    def _forget(self, seq: Sequence) -> None:
        self._seqs.pop(seq.seq_id, None)

    # -- keys ----------------------------------------------------------------------------------

    def _state(self, seq: Sequence) -> _SeqKeys:
        state = self._seqs.get(seq.seq_id)
        if state is None:
            check_block_hashes(seq.request, self.block_size)
            state = self._seqs[seq.seq_id] = _SeqKeys()
        return state

    def _key(self, seq: Sequence, state: _SeqKeys, index: int) -> Hashable:
        keys = state.keys
        while len(keys) <= index:
            content = block_content_key(seq, len(keys), self.block_size)
            keys.append(self._chain(keys[-1] if keys else None, content))
        return keys[index]

    def _new_entry(self, block: Block, key: Hashable) -> None:
        self._tick += 1
        block.key, block.inserted, block.hits = key, self._tick, 0

    # -- the index shape (subclasses) --------------------------------------------------------

    def _chain(self, parent_key: Hashable | None, content_key: Hashable) -> Hashable:
        """The index key of a block given its parent's key and its own content key."""
        raise NotImplementedError

    def _find(self, parent: Block | None, key: Hashable) -> Block | None:
        raise NotImplementedError

    def _insert(self, block: Block, parent: Block | None, key: Hashable) -> None:
        raise NotImplementedError

    def _remove(self, block: Block) -> None:
        """Take an evicted block out of the index."""
        raise NotImplementedError

    def _evictable(self, block: Block) -> bool:
        """Whether an unused cached block may be evicted now."""
        raise NotImplementedError
