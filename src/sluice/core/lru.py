"""The LRU of evictable cached KV blocks: a queue with lazy deletion, on numpy arrays.

Why this shape: blocks enter at the tail when released (a request's ~100 at once) and leave
at the head when evicted (in bulk at admission, one at a time as decoders cross block
boundaries); a prefix hit or a pin takes a block out of the *middle*. ``_queue[head:tail]``
holds block ids in release order and an entry is live only where ``_pos[block]`` equals its
index, so removal from the middle is O(1) (the entry just goes stale) and bulk pushes and
pops are a few vectorised operations. The array is compacted when the tail reaches its end,
which costs O(blocks) once per at least ``num_blocks`` pushes.
"""

from __future__ import annotations

import numpy as np


class BlockQueue:
    def __init__(self, num_blocks: int) -> None:
        self._queue = np.zeros(2 * num_blocks + 16, dtype=np.int64)
        self._pos = np.full(num_blocks, -1, dtype=np.int64)  # index of a block's live entry
        self._head = 0
        self._tail = 0
        self._stale = 0  # entries in [head, tail) left stale by removals
        self.size = 0  # live entries

    def __len__(self) -> int:
        return self.size

    def contains(self, blocks: np.ndarray) -> np.ndarray:
        return self._pos[blocks] >= 0

    def live(self) -> np.ndarray:
        """Live block ids, least recently pushed first."""
        seg = self._queue[self._head: self._tail]
        return seg[self._pos[seg] == np.arange(self._head, self._tail)]

    def push(self, blocks: np.ndarray) -> None:
        """Append ``blocks`` (distinct, none queued) as the most recently released."""
        n = len(blocks)
        if not n:
            return
        if self._tail + n > len(self._queue):
            self._compact()
        tail = self._tail
        self._queue[tail: tail + n] = blocks
        self._pos[blocks] = np.arange(tail, tail + n)
        self._tail = tail + n
        self.size += n

    def remove(self, blocks: np.ndarray) -> None:
        """Take queued ``blocks`` out (a hit or a pin): their entries go stale."""
        self._pos[blocks] = -1
        self._stale += len(blocks)
        self.size -= len(blocks)

    def pop_one(self) -> int:
        """The least recently released block (the queue is not empty)."""
        queue, pos = self._queue, self._pos
        head = self._head
        b = queue.item(head)
        while pos.item(b) != head:  # skip entries left stale by removals
            head += 1
            self._stale -= 1
            b = queue.item(head)
        self._head = head + 1
        pos[b] = -1
        self.size -= 1
        return b

    def pop(self, n: int) -> np.ndarray:
        """The ``n`` least recently released blocks (``n <= len(self)``)."""
        head = self._head
        if not self._stale:  # no removal since the last compaction: the head is all live
            blocks = self._queue[head: head + n].copy()
            self._head = head + n
        else:
            blocks = self._pop_skipping_stale(n)
        self._pos[blocks] = -1
        self.size -= n
        return blocks

    def _pop_skipping_stale(self, n: int) -> np.ndarray:
        queue, pos = self._queue, self._pos
        head = self._head
        taken: list[np.ndarray] = []
        while n:
            seg = queue[head: head + n]
            live = seg[pos[seg] == np.arange(head, head + len(seg))]
            head += len(seg)
            self._stale -= len(seg) - len(live)
            if len(live):
                taken.append(live)
                n -= len(live)
        self._head = head
        return taken[0] if len(taken) == 1 else np.concatenate(taken)

    def _compact(self) -> None:
        live = self.live()
        self._queue[: len(live)] = live
        self._pos[live] = np.arange(len(live))
        self._head, self._tail = 0, len(live)
        self._stale = 0

    def check(self) -> None:
        live = self.live()
        if len(live) != self.size or len(np.unique(live)) != len(live):
            raise AssertionError(f"LRU holds {len(live)} live entries, count says {self.size}, "
                                 "or a block twice")
        if self._tail - self._head - self.size != self._stale:
            raise AssertionError(f"LRU stale count {self._stale} is wrong")
