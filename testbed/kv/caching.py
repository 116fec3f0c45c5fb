"""Prefix caching on top of paged blocks: full, computed blocks are indexed by content so
that sequences starting with the same tokens share them, and unused cached blocks stay
resident until an eviction policy picks them.

`CachingKVManager` holds what both index shapes share: per-sequence block keys, the commit
of newly full blocks, reference counts and eviction. Subclasses say how the index is
organised (`_find`, `_insert`, `_remove`) and which unused blocks may be evicted.

A sequence's block keys are computed lazily and remembered in its `policy_state` (a waiting
sequence is looked up at every step), so they live exactly as long as the sequence.

Private blocks (keys unique to their request: generated tokens, prompts without hashes or
token ids; see `first_private_block`) can only ever be hit by their own request once it let
go of them. So a manager that `defers_private` (a flat index) under LRU indexes them only
then: while their sequence holds them they are merely committed, and when it finishes they
are never indexed at all: they keep their place in the eviction order as one retired run
(`Evictor.add_retired`). Lookups, hits, evictions and block ids are those of indexing every
block at once; only the work differs.
"""
from __future__ import annotations

from collections.abc import Hashable

from testbed.kv.block import Block
from testbed.kv.block_keys import NO_BLOCK, block_content_keys, check_block_hashes, first_private_block
from testbed.kv.eviction import Evictor
from testbed.kv.paged import PagedKVManager
from testbed.request import Sequence


class CachingKVManager(PagedKVManager):
    _root: Block | None = None  # the parent passed for block 0
    defers_private = False  # whether private blocks may be indexed late (see the module docstring)

    def __init__(self, num_blocks: int, block_size: int = 16, num_host_blocks: int = 0,
                 eviction: str = "lru"):
        super().__init__(num_blocks, block_size, num_host_blocks)
        self.evictor = Evictor(eviction)
        # seq_id -> how many of its blocks are committed (indexed, or swapped for an indexed
        # twin, or private and deferred)
        self._committed: dict[int, int] = {}
        self._holders: dict[int, Sequence] = {}  # seq_id -> sequence, while it holds blocks
        # seq_id -> how many of its leading blocks are indexed as they are committed
        self._index_limit: dict[int, int] = {}
        self._memo = ("kv block keys", type(self).__name__, block_size)
        self._defer = self.defers_private and eviction == "lru"
        self._indexes_all = ("kv indexes private blocks", type(self).__name__, block_size)

    def can_ever_fit(self, seq: Sequence) -> str | None:
        check_block_hashes(seq.request, self.block_size)
        return super().can_ever_fit(seq)

    def cached_blocks(self) -> set[int]:
        """Ids of the blocks whose content is kept for reuse (in use or evictable): those in
        the index, and the private ones it defers (held, or retired)."""
        cached = {b.block_id for b in self.blocks if b.key is not None}
        cached.update(self.evictor.retired())
        for seq in self._holders.values():
            cached.update(seq.block_table[slice(*self._deferred(seq))])
        return cached

    def commit(self, seq: Sequence) -> None:
        full = seq.num_computed_tokens // self.block_size
        if full > self._committed[seq.seq_id]:
            self._commit_upto(seq, full)

    def _commit_upto(self, seq: Sequence, full: int) -> None:
        committed = self._committed[seq.seq_id]
        if full <= committed:
            return
        stop = self._indexed_upto(seq, full)
        if stop > committed:
            self._index_blocks(seq.block_table, self._keys_upto(seq, stop), committed, stop)
        self._committed[seq.seq_id] = full

    def _indexed_upto(self, seq: Sequence, full: int) -> int:
        """How many of the first `full` blocks of `seq` (which holds blocks) go into the index
        when committed."""
        return min(full, self._index_limit[seq.seq_id])

    def _limit_of(self, seq: Sequence) -> int:
        """How many leading blocks of `seq` are indexed as they are committed: all, or its
        shared ones only while its private ones are deferred."""
        if not self._defer or self._indexes_all in seq.policy_state:
            return NO_BLOCK
        return first_private_block(seq.request, self.block_size)

    def _deferred(self, seq: Sequence) -> tuple[int, int]:
        """The range of block positions of `seq` committed but not indexed (private, deferred)."""
        return self._index_limit.get(seq.seq_id, 0), self._committed.get(seq.seq_id, 0)

    def _release_all(self, seq: Sequence, finished: bool = False) -> None:
        start, stop = self._deferred(seq)
        if start < stop:
            table = seq.block_table
            if finished:  # tail first, as released one by one
                self._release_ids(reversed(table[stop:]))
                self._retire(table[start:stop])
                self._release_ids(reversed(table[:start]))
                table.clear()
                return
            # It may run again and hit them: from now on its blocks are indexed as any others.
            self._index_blocks(table, self._keys_upto(seq, stop), start, stop)
            seq.policy_state[self._indexes_all] = True
            self._index_limit[seq.seq_id] = NO_BLOCK
        super()._release_all(seq)

    def _retire(self, block_ids: list[int]) -> None:
        """Release blocks held by a finished sequence alone that nobody can ever hit: evictable,
        tail first, as one retired run (their counters stay as that holder left them)."""
        self.evictor.add_retired(block_ids[::-1], self._tick + 1)
        self._tick += len(block_ids)
        self._num_used -= len(block_ids)
        self.stats.freed_blocks += len(block_ids)

    def _fills_to_index(self, seqs: list[Sequence], computed: list[int], remaining: list[int],
                        num_steps: int) -> list[int] | None:
        bs, committed, limit, fresh, indexing = self.block_size, self._committed, self._index_limit, [], []
        for i, (seq, c, r) in enumerate(zip(seqs, computed, remaining)):
            start = committed[seq.seq_id]
            if start != c // bs:
                raise RuntimeError(f"decode run: sequence {seq.seq_id} has {c // bs - start} "
                                   f"computed blocks not committed")
            stop = min((c + min(r, num_steps)) // bs, limit[seq.seq_id])
            if stop > start:
                indexing.append(i)
                fresh.append((seq, start, self._keys_upto(seq, stop)[start:stop]))
        return None if fresh and self._any_indexed(fresh) else indexing

    def _index_filled(self, filled: list[tuple[Sequence, int]]) -> None:
        for seq, full in filled:
            self._commit_upto(seq, full)

    def _settle(self, seq: Sequence, full: int) -> None:
        self._committed[seq.seq_id] = full

    def _index_blocks(self, table: list[int], keys: list[Hashable], start: int, stop: int) -> None:
        """Index blocks `start` to `stop` - 1 of a block table under `keys`, block by block."""
        blocks, find, insert = self.blocks, self._find, self._insert
        parent = blocks[table[start - 1]] if start else self._root
        for i in range(start, stop):
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

    # -- hooks of PagedKVManager -------------------------------------------------------------

    def _match(self, seq: Sequence) -> list[Block]:
        keys = self._keys(seq)
        hits: list[Block] = []
        node = self._root
        for i in range(min((seq.num_tokens - 1) // self.block_size, self._limit_of(seq))):
            node = self._find(node, self._key(seq, keys, i))
            if node is None:
                break
            hits.append(node)
        return hits

    def _acquire(self, block: Block) -> None:
        if block.ref_count == 0:
            self.evictor.discard(block)
        super()._acquire(block)

    def _take_blocks(self, count: int) -> list[int]:
        """Uncached blocks first, then evicted ones."""
        fresh = min(count, len(self._free))
        block_ids = super()._take_blocks(fresh)
        if count > fresh:
            block_ids += self._evict(count - fresh)
            self.stats.evicted_blocks += count - fresh
        return block_ids

    def _evict(self, count: int) -> list[int]:
        """Take the first `count` blocks of the eviction order out of the cache; their ids,
        each now held once. Retired blocks were never indexed and still count their one
        holder, so they are not touched at all."""
        block_ids, indexed = self.evictor.evict(count)
        remove = self._remove
        for block in indexed:
            remove(block)
            block.key = None
            block.ref_count = 1
        return block_ids

    def _on_unused(self, block: Block) -> None:
        if block.key is None:
            self._free.append(block.block_id)
        elif self._evictable(block):
            self.evictor.add(block)

    def _on_all_unused(self, blocks: list[Block]) -> None:
        # The free list and the evictor are independent, so each may take its share at once.
        evictable = self._evictable
        self._free.extend([block.block_id for block in blocks if block.key is None])
        self.evictor.add_all([block for block in blocks if block.key is not None and evictable(block)])

    def _on_admitted(self, seq: Sequence, num_cached_blocks: int) -> None:
        self._hold(seq, num_cached_blocks)

    def _on_swapped_in(self, seq: Sequence) -> None:
        self._hold(seq, 0)  # fresh blocks: the next commit indexes or dedups them

    def _hold(self, seq: Sequence, committed: int) -> None:
        self._committed[seq.seq_id] = committed
        self._holders[seq.seq_id] = seq
        self._index_limit[seq.seq_id] = self._limit_of(seq)

    def _forget(self, seq: Sequence) -> None:
        self._committed.pop(seq.seq_id, None)
        self._holders.pop(seq.seq_id, None)
        self._index_limit.pop(seq.seq_id, None)

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
            contents = block_content_keys(seq, len(keys), count, self.block_size)
            keys += self._chain_keys(keys[-1] if keys else None, contents)
        return keys

    def _new_entry(self, block: Block, key: Hashable) -> None:
        self._tick += 1
        block.key, block.inserted, block.hits = key, self._tick, 0

    # -- the index shape (subclasses) --------------------------------------------------------

    def _chain_keys(self, parent_key: Hashable | None, content_keys: list[Hashable]) -> list[Hashable]:
        """The index keys of consecutive blocks given the key of the block before the first
        (None at the start) and their content keys."""
        raise NotImplementedError

    def _find(self, parent: Block | None, key: Hashable) -> Block | None:
        raise NotImplementedError

    def _insert(self, block: Block, parent: Block | None, key: Hashable) -> None:
        raise NotImplementedError

    def _remove(self, block: Block) -> None:
        """Take an evicted block out of the index."""
        raise NotImplementedError

    def _any_indexed(self, fresh: list[tuple[Sequence, int, list[Hashable]]]) -> bool:
        """Whether any of the keys would find a block already indexed, committed in order:
        each (sequence, its committed blocks, keys of its next blocks)."""
        raise NotImplementedError

    def _evictable(self, block: Block) -> bool:
        """Whether an unused cached block may be evicted now."""
        raise NotImplementedError
