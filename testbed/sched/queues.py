"""Waiting queues. A scheduler only ever takes the head, so each queue keeps its own order
cheaply: FIFO in a deque, by a key in a heap. Preempted sequences go back with `push_front`."""
from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterator

from testbed.request import Sequence


class FifoQueue:
    """First come, first served; `push_front` puts a preempted sequence ahead of everyone."""

    def __init__(self) -> None:
        self._items: deque[Sequence] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Sequence]:
        return iter(self._items)

    def push(self, seq: Sequence) -> None:
        self._items.append(seq)

    def push_front(self, seq: Sequence) -> None:
        self._items.appendleft(seq)

    def peek(self) -> Sequence:
        return self._items[0]

    def pop(self) -> Sequence:
        return self._items.popleft()

    def remove(self, seq: Sequence) -> None:
        self._items.remove(seq)

    def sort(self, key: Callable[[Sequence], object]) -> None:
        """Reorder in place (stable), for policies that rank the whole queue each step."""
        self._items = deque(sorted(self._items, key=key))


class KeyedQueue:
    """Smallest `key(seq)` first, ties by seq_id; a preempted sequence returns to its rank."""

    def __init__(self, key: Callable[[Sequence], object]) -> None:
        self._key = key
        self._heap: list[tuple[object, int, Sequence]] = []

    def __len__(self) -> int:
        return len(self._heap)

    def __iter__(self) -> Iterator[Sequence]:
        return (entry[2] for entry in sorted(self._heap))

    def push(self, seq: Sequence) -> None:
        heapq.heappush(self._heap, (self._key(seq), seq.seq_id, seq))

    push_front = push

    def peek(self) -> Sequence:
        return self._heap[0][2]

    def pop(self) -> Sequence:
        return heapq.heappop(self._heap)[2]

    def remove(self, seq: Sequence) -> None:
        self._heap = [e for e in self._heap if e[2] is not seq]
        heapq.heapify(self._heap)


class LevelQueues:
    """One FIFO per priority level (0 = highest); the head is the head of the highest non-empty level."""

    def __init__(self, num_levels: int, level_of: Callable[[Sequence], int]) -> None:
        self.levels = [FifoQueue() for _ in range(num_levels)]
        self._level_of = level_of
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[Sequence]:
        return (seq for queue in self.levels for seq in queue)

    def push(self, seq: Sequence) -> None:
        self.levels[self._level_of(seq)].push(seq)
        self._len += 1

    def push_front(self, seq: Sequence) -> None:
        self.levels[self._level_of(seq)].push_front(seq)
        self._len += 1

    def peek(self) -> Sequence:
        return self._first().peek()

    def pop(self) -> Sequence:
        self._len -= 1
        return self._first().pop()

    def remove(self, seq: Sequence) -> None:
        self.levels[self._level_of(seq)].remove(seq)
        self._len -= 1

    def pop_heads(self, level: int, take: Callable[[Sequence], bool]) -> list[Sequence]:
        """Pop from the head of `level` while `take(head)` holds."""
        queue, taken = self.levels[level], []
        while queue and take(queue.peek()):
            taken.append(queue.pop())
        self._len -= len(taken)
        return taken

    def _first(self) -> FifoQueue:
        for queue in self.levels:
            if queue:
                return queue
        raise IndexError("peek or pop from an empty queue")
