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


class PrefixKVManager(CachingKVManager):
    def __init__(self, num_blocks: int, block_size: int = 16, num_host_blocks: int = 0,
                 eviction: str = "lru"):
        super().__init__(num_blocks, block_size, num_host_blocks, eviction)
        self._index: dict[Hashable, Block] = {}

    def _chain(self, parent_key: Hashable | None, content_key: Hashable) -> Hashable:
        return hash((parent_key, content_key))

    def _find(self, parent: Block | None, key: Hashable) -> Block | None:
        return self._index.get(key)

    def _insert(self, block: Block, parent: Block | None, key: Hashable) -> None:
        self._new_entry(block, key)
        self._index[key] = block

    def _remove(self, block: Block) -> None:
        del self._index[block.key]

    def _evictable(self, block: Block) -> bool:
        return True
