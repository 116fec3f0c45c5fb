"""Prefix caching in a radix tree over token blocks (SGLang): each cached block is a node,
its children are keyed by the content of the next block, and a lookup walks down from the root.

Only leaves nobody uses are evictable, so the cache never keeps a block whose prefix is gone;
evicting a leaf can make its parent the next candidate.
"""
from __future__ import annotations

from collections.abc import Hashable

from testbed.kv.block import Block
from testbed.kv.caching import CachingKVManager
from testbed.request import Sequence


class RadixKVManager(CachingKVManager):
    def __init__(self, num_blocks: int, block_size: int = 16, num_host_blocks: int = 0,
                 eviction: str = "lru"):
        super().__init__(num_blocks, block_size, num_host_blocks, eviction)
        self._root = Block(-1)  # the empty prefix; never evicted, holds no KV

    def _chain_keys(self, parent_key: Hashable | None, content_keys: list[Hashable]) -> list[Hashable]:
        return list(content_keys)  # the tree path carries the prefix

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

    def _any_indexed(self, fresh: list[tuple[Sequence, int, list[Hashable]]]) -> bool:
        """Only a sequence's first new block can meet an indexed twin, or the first new block
        of another sequence under the same parent: its later ones hang below blocks it has
        just indexed, which no one else reaches."""
        blocks, firsts = self.blocks, set()
        for seq, committed, keys in fresh:
            if not keys:
                continue
            parent = blocks[seq.block_table[committed - 1]] if committed else self._root
            first = (parent.block_id, keys[0])
            if keys[0] in parent.children or first in firsts:
                return True
            firsts.add(first)
        return False

    def _evict(self, count: int) -> list[int]:
        """One at a time: removing a leaf can make its parent the next to go."""
        block_ids = []
        for _ in range(count):
            block = self.blocks[self.evictor.pop()]
            self._remove(block)
            block.key = None
            block.ref_count = 1
            block_ids.append(block.block_id)
        return block_ids

    def _evictable(self, block: Block) -> bool:
        return not block.children
