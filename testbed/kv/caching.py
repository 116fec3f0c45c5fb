"""Prefix caching on top of paged blocks: full, computed blocks are indexed by content so
that sequences starting with the same tokens share them, and unused cached blocks stay
resident until an eviction policy picks them.

`CachingKVManager` holds what both index shapes share: per-sequence block keys, the commit
of newly full blocks, reference counts and eviction. Subclasses say how the index is
organised (`_find`, `_insert`, `_remove`) and which unused blocks may be evicted.

A sequence's block keys are computed lazily and remembered in its `policy_state` (a waiting
sequence is looked up at every step), so they live exactly as long as the sequence.
"""
from __future__ import annotations

from collections.abc import Hashable

from testbed.kv.block import Block
from testbed.kv.block_keys import block_content_keys, check_block_hashes
from testbed.kv.eviction import Evictor
from testbed.kv.paged import PagedKVManager
from testbed.request import Sequence


class CachingKVManager(PagedKVManager):
    _root: Block | None = None  # the parent passed for block 0

    def __init__(self, num_blocks: int, block_size: int = 16, num_host_blocks: int = 0,
                 eviction: str = "lru"):
        super().__init__(num_blocks, block_size, num_host_blocks)
        self.evictor = Evictor(eviction)
        # seq_id -> how many of its blocks are committed (indexed, or swapped for an indexed twin)
        self._committed: dict[int, int] = {}
        self._memo = ("kv block keys", type(self).__name__, block_size)

    def can_ever_fit(self, seq: Sequence) -> str | None:
        check_block_hashes(seq.request, self.block_size)
        return super().can_ever_fit(seq)

    def cached_blocks(self) -> set[int]:
        """Ids of the blocks in the index now (in use or evictable)."""
        return {b.block_id for b in self.blocks if b.key is not None}

    def commit(self, seq: Sequence) -> None:
        committed = self._committed[seq.seq_id]
        full = seq.num_computed_tokens // self.block_size
        if full <= committed:
            return
        keys = self._keys_upto(seq, full)
        blocks, table, find, insert = self.blocks, seq.block_table, self._find, self._insert
        parent = blocks[table[committed - 1]] if committed else self._root
        for i in range(committed, full):
            key, block = keys[i], blocks[table[i]]
            twin = find(parent, key)
            if twin is None:
                insert(block, parent, key)
            elif twin is not block:  # computed twice (e.g. by two sequences at once): keep one copy
                self._acquire(twin)
                table[i] = twin.block_id
                self._release(block)
                block = twin
            parent = block
        self._committed[seq.seq_id] = full

    # -- hooks of PagedKVManager -------------------------------------------------------------

    def _match(self, seq: Sequence) -> list[Block]:
        keys = self._keys(seq)
        hits: list[Block] = []
        node = self._root
        for i in range((seq.num_tokens - 1) // self.block_size):
            node = self._find(node, self._key(seq, keys, i))
            if node is None:
                break
            hits.append(node)
        return hits

    def _acquire(self, block: Block) -> None:
        if block.ref_count == 0:
            self.evictor.discard(block)
        super()._acquire(block)

    def _take_blocks(self, count: int) -> list[Block]:
        """Uncached blocks first, then evicted ones."""
        fresh = min(count, len(self._free))
        blocks = super()._take_blocks(fresh)
        evictor, remove = self.evictor, self._remove
        for _ in range(count - fresh):
            block = evictor.pop()
            remove(block)
            block.key = None
            blocks.append(block)
        self.stats.evicted_blocks += count - fresh
        return blocks

    def _on_unused(self, block: Block) -> None:
        if block.key is None:
            self._free.append(block.block_id)
        elif self._evictable(block):
            self.evictor.add(block)

    def _on_all_unused(self, blocks: list[Block]) -> None:
        free, evictor, evictable = self._free, self.evictor, self._evictable
        for block in blocks:
            if block.key is None:
                free.append(block.block_id)
            elif evictable(block):
                evictor.add(block)

    def _on_admitted(self, seq: Sequence, num_cached_blocks: int) -> None:
        self._committed[seq.seq_id] = num_cached_blocks

    def _on_swapped_in(self, seq: Sequence) -> None:
        self._committed[seq.seq_id] = 0  # fresh blocks: the next commit indexes or dedups them

    def _forget(self, seq: Sequence) -> None:
        self._committed.pop(seq.seq_id, None)

    # -- keys ----------------------------------------------------------------------------------

    def _keys(self, seq: Sequence) -> list[Hashable]:
        """The remembered index keys of `seq`'s leading full blocks (see `_key`)."""
        keys = seq.policy_state.get(self._memo)
        if keys is None:
            check_block_hashes(seq.request, self.block_size)
            keys = seq.policy_state[self._memo] = []
        return keys

    def _key(self, seq: Sequence, keys: list[Hashable], index: int) -> Hashable:
        """The index key of full block `index`, extending the remembered `keys` as needed."""
        if len(keys) <= index:
            self._keys_upto(seq, index + 1)
        return keys[index]

    def _keys_upto(self, seq: Sequence, count: int) -> list[Hashable]:
        """The remembered keys of `seq`, extended to at least its first `count` full blocks."""
        keys = self._keys(seq)
        if len(keys) < count:
            chain, parent = self._chain, keys[-1] if keys else None
            for content in block_content_keys(seq, len(keys), count, self.block_size):
                parent = chain(parent, content)
                keys.append(parent)
        return keys

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
