"""Prefix caching in a radix tree over token blocks (SGLang): each cached block is a node,
its children are keyed by the content of the next block, and a lookup walks down from the root.

Only leaves nobody uses are evictable, so the cache never keeps a block whose prefix is gone;
evicting a leaf can make its parent the next candidate.
"""
from __future__ import annotations

from collections.abc import Hashable

from testbed.kv.block import Block
from testbed.kv.caching import CachingKVManager


class RadixKVManager(CachingKVManager):
    def __init__(self, num_blocks: int, block_size: int = 16, num_host_blocks: int = 0,
                 eviction: str = "lru"):
        super().__init__(num_blocks, block_size, num_host_blocks, eviction)
        self._root = Block(-1)  # the empty prefix; never evicted, holds no KV

    def _chain(self, parent_key: Hashable | None, content_key: Hashable) -> Hashable:
        return content_key  # the tree path carries the prefix

    def _find(self, parent: Block | None, key: Hashable) -> Block | None:
        return parent.children.get(key)

    def _insert(self, block: Block, parent: Block | None, key: Hashable) -> None:
        self._new_entry(block, key)
        parent.children[key] = block
        block.parent = parent

    def _remove(self, block: Block) -> None:
        parent = block.parent
        del parent.children[block.key]
        block.parent = None
        if parent is not self._root and parent.ref_count == 0 and not parent.children:
            self.evictor.add(parent)

    def _evictable(self, block: Block) -> bool:
        return not block.children
