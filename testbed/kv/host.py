"""The host (CPU) block pool that swapped-out sequences park their KV in."""
from __future__ import annotations


class HostPool:
    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self._free = list(range(num_blocks - 1, -1, -1))  # pop() hands out 0, 1, 2, ...
        self._tables: dict[int, list[int]] = {}  # seq_id -> its host blocks, in order

    @property
    def num_free(self) -> int:
        return len(self._free)

    def store(self, seq_id: int, num_blocks: int) -> list[int] | None:
        """Reserve `num_blocks` host blocks for `seq_id`, or None if there are not enough."""
        if num_blocks > len(self._free):
            return None
        if seq_id in self._tables:
            raise ValueError(f"sequence {seq_id} is already swapped out")
        table = [self._free.pop() for _ in range(num_blocks)]
        self._tables[seq_id] = table
        return table

    def table(self, seq_id: int) -> list[int]:
        try:
            return self._tables[seq_id]
        except KeyError:
            raise ValueError(f"sequence {seq_id} is not swapped out") from None

    def release(self, seq_id: int) -> None:
        """Give back `seq_id`'s host blocks (after swap-in, or when it is freed); no-op if it has none."""
        table = self._tables.pop(seq_id, None)
        if table:
            self._free.extend(reversed(table))
