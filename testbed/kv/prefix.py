"""Prefix caching with chained block hashes (vLLM): block i's key hashes block i-1's key
with block i's content key, so one hash table finds a whole prefix, block by block.

Any unused cached block may be evicted, even one whose descendants stay cached: those become
unreachable (a lookup stops at the first missing block) until they are evicted in turn.
Keys are Python hashes (64 bits); a collision would need ~2^32 resident blocks to be likely.
"""
from __future__ import annotations

from collections.abc import Hashable

from testbed.kv.block import Block
from testbed.kv.caching import CachingKVManager
from testbed.request import Sequence


class PrefixKVManager(CachingKVManager):
    defers_private = True
    def __init__(self, num_blocks: int, block_size: int = 16, num_host_blocks: int = 0,
                 eviction: str = "lru"):
        super().__init__(num_blocks, block_size, num_host_blocks, eviction)
        self._index: dict[Hashable, Block] = {}

    def _chain_keys(self, parent_key: Hashable | None, content_keys: list[Hashable]) -> list[Hashable]:
        keys = []
        for content in content_keys:
            parent_key = hash((parent_key, content))
            keys.append(parent_key)
        return keys

    def _find(self, parent: Block | None, key: Hashable) -> Block | None:
        return self._index.get(key)

    def _insert(self, block: Block, parent: Block | None, key: Hashable) -> None:
        self._new_entry(block, key)
        self._index[key] = block

    def _index_blocks(self, table: list[int], keys: list[Hashable], start: int, stop: int) -> None:
        """All at once when none of the keys is indexed yet (the usual case)."""
        new_keys = keys[start:stop]
        if self._any_indexed([(None, start, new_keys)]):
            super()._index_blocks(table, keys, start, stop)
            return
        blocks = self.blocks
        self._index_new(new_keys, [blocks[i] for i in table[start:stop]])

    def _index_filled(self, filled: list[tuple[Sequence, int]]) -> None:
        """All at once: `advance_decodes` checked that none of the keys is indexed."""
        blocks, committed, new_keys, new_blocks = self.blocks, self._committed, [], []
        for seq, full in filled:
            start, stop = committed[seq.seq_id], self._indexed_upto(seq, full)
            if stop > start:
                new_keys += self._keys_upto(seq, stop)[start:stop]
                new_blocks += [blocks[i] for i in seq.block_table[start:stop]]
            committed[seq.seq_id] = full
        self._index_new(new_keys, new_blocks)

    def _index_new(self, keys: list[Hashable], blocks: list[Block]) -> None:
        tick = self._tick
        for block, key in zip(blocks, keys):
            tick += 1
            block.key, block.inserted, block.hits = key, tick, 0
        self._tick = tick
        self._index.update(zip(keys, blocks))

    def _any_indexed(self, fresh: list[tuple[Sequence | None, int, list[Hashable]]]) -> bool:
        keys = [key for _, _, seq_keys in fresh for key in seq_keys]
        return any(map(self._index.__contains__, keys)) or len(set(keys)) < len(keys)

    def _remove(self, block: Block) -> None:
        del self._index[block.key]

    def _evictable(self, block: Block) -> bool:
        return True
