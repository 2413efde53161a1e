"""Paged KV blocks with prefix caching, LRU eviction, pins with expiry and a host tier.

Every device block is in exactly one of three states (``check()`` asserts it):

* **owned** — reference count > 0: held by running requests and/or pins;
* **cached** — count 0 but its content hash is registered: reusable by a later request with
  the same prefix, evictable in LRU order;
* **free** — count 0 and no hash.

Allocation takes free blocks first and evicts the least recently freed cached block only
when none is left (vLLM v1 keeps one queue for both; preferring plain free blocks keeps more
reuse and is otherwise the same). A request's blocks are released tail first, so its last
blocks are evicted first, as in vLLM.

Pins (Continuum-style retention) hold an extra reference on blocks until they expire or are
released; under memory pressure the scheduler reclaims the pins expiring soonest first.
The host tier only counts blocks: what moves and how long it takes is the executor's job.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass, field

from sluice.core.request import Request


@dataclass(slots=True)
class Pin:
    id: int
    blocks: list[int]
    expiry: float
    owner: int | None = None  # program id (agent retention) or None
    tag: str = ""


@dataclass(slots=True)
class KVStats:
    """Counters the metrics report; all monotone."""

    hit_tokens: int = 0
    lookup_tokens: int = 0
    evicted_cached: int = 0
    pins_created: int = 0
    pins_expired: int = 0
    pins_reclaimed: int = 0
    pinned_blocks_reclaimed: int = 0
    pins_released: int = 0
    swap_out_blocks: int = 0
    swap_in_blocks: int = 0
    peak_used: int = 0


class KVCache:
    """Block manager for one replica. Block ids are ``0 .. num_blocks-1``."""

    def __init__(self, num_blocks: int, block_size: int = 16, *,
                 enable_prefix_caching: bool = True, watermark: float = 0.0,
                 num_host_blocks: int = 0) -> None:
        if num_blocks < 1:
            raise ValueError(f"KV cache needs at least one block, got {num_blocks}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = enable_prefix_caching
        self.watermark_blocks = int(watermark * num_blocks)
        self.ref = [0] * num_blocks
        self.block_hash: list[int | None] = [None] * num_blocks
        self.free_plain: list[int] = list(range(num_blocks - 1, -1, -1))  # pop() -> 0 first
        self.cached: OrderedDict[int, None] = OrderedDict()  # LRU, oldest first
        self.hash_to_block: dict[int, int] = {}
        self.hashed_count: dict[int, int] = {}  # request id -> blocks already hashed
        self.pins: dict[int, Pin] = {}
        self._pin_heap: list[tuple[float, int]] = []
        self._next_pin = 0
        self.num_host_blocks = num_host_blocks
        self.host_used = 0
        self.stats = KVStats()

    # -- capacity -------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        """Blocks an allocation can take (plain free + evictable cached)."""
        return len(self.free_plain) + len(self.cached)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    @property
    def pinned_blocks(self) -> int:
        """Distinct blocks held by pins (a program's pins may overlap)."""
        return len({b for p in self.pins.values() for b in p.blocks})

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    # -- prefix cache ---------------------------------------------------------------------
    def lookup(self, req: Request) -> list[int]:
        """Cached blocks matching the longest prefix of ``req`` (at least one token left to
        compute, as vLLM: the last token's logits are needed)."""
        if not self.prefix_caching:
            return []
        limit = req.num_tokens - 1
        hashes = req.content.block_hashes(self.block_size, limit)
        hits: list[int] = []
        h2b = self.hash_to_block
        for h in hashes[: limit // self.block_size]:
            b = h2b.get(h)
            if b is None:
                break
            hits.append(b)
        return hits

    def acquire_hits(self, req: Request, hits: list[int]) -> None:
        """Take references on prefix hits and make them the head of ``req``'s block table."""
        for b in hits:
            if self.ref[b] == 0:
                del self.cached[b]
            self.ref[b] += 1
        req.blocks = list(hits)
        req.num_computed = len(hits) * self.block_size
        self.stats.lookup_tokens += req.num_tokens
        self.stats.hit_tokens += req.num_computed
        self.hashed_count[req.id] = len(hits)

    # -- allocation -----------------------------------------------------------------------
    def can_allocate(self, n_blocks: int, *, admission: bool = False) -> bool:
        reserve = self.watermark_blocks if admission else 0
        return self.num_free - n_blocks >= reserve

    def needed_blocks(self, req: Request, total_tokens: int) -> int:
        return max(0, self.blocks_for(total_tokens) - len(req.blocks))

    def allocate(self, req: Request, total_tokens: int, *, admission: bool = False) -> bool:
        """Grow ``req``'s block table to hold ``total_tokens``; False (no change) if short."""
        need = -(-total_tokens // self.block_size) - len(req.blocks)
        if need <= 0:
            return True
        if not self.can_allocate(need, admission=admission):
            return False
        self._take_blocks(need, req.blocks)
        used = self.num_blocks - len(self.free_plain) - len(self.cached)
        if used > self.stats.peak_used:
            self.stats.peak_used = used
        return True

    def _take_blocks(self, need: int, out: list[int]) -> None:
        """Append ``need`` blocks to ``out``: plain free ones first, then evict LRU cached."""
        ref = self.ref
        fp = self.free_plain
        while need and fp:
            b = fp.pop()
            ref[b] = 1
            out.append(b)
            need -= 1
        if not need:
            return
        cached = self.cached
        bh = self.block_hash
        h2b = self.hash_to_block
        self.stats.evicted_cached += need
        for _ in range(need):
            b = cached.popitem(last=False)[0]
            del h2b[bh[b]]  # invariant: a block with a hash is the one registered for it
            bh[b] = None
            ref[b] = 1
            out.append(b)

    def commit(self, req: Request) -> None:
        """Register the hashes of ``req``'s newly full computed blocks in the prefix cache."""
        if not self.prefix_caching:
            return
        n_full = req.num_computed // self.block_size
        done = self.hashed_count.get(req.id, 0)
        if n_full <= done:
            return
        hashes = req.content.block_hashes(self.block_size, req.num_computed)
        h2b = self.hash_to_block
        bh = self.block_hash
        blocks = req.blocks
        for i in range(done, n_full):
            h = hashes[i]
            b = blocks[i]
            if bh[b] is None and h not in h2b:
                h2b[h] = b
                bh[b] = h
        self.hashed_count[req.id] = n_full

    def free(self, req: Request) -> None:
        """Drop ``req``'s references, tail first (its last blocks become the first evicted)."""
        self._release(reversed(req.blocks))
        req.blocks = []
        self.hashed_count.pop(req.id, None)

    def _release(self, blocks) -> None:
        ref = self.ref
        bh = self.block_hash
        cached = self.cached
        fp = self.free_plain
        for b in blocks:
            r = ref[b] - 1
            ref[b] = r
            if r == 0:
                if bh[b] is not None:
                    cached[b] = None
                else:
                    fp.append(b)

    # -- pins -----------------------------------------------------------------------------
    def pin(self, blocks: list[int], expiry: float, owner: int | None = None,
            tag: str = "") -> int:
        """Hold ``blocks`` until ``expiry`` (virtual or wall seconds). Returns the pin id."""
        for b in blocks:
            if self.ref[b] == 0 and b not in self.cached:
                raise ValueError(f"cannot pin free block {b}: it holds no KV")
        pid = self._next_pin
        self._next_pin += 1
        for b in blocks:
            if self.ref[b] == 0:
                del self.cached[b]
            self.ref[b] += 1
        self.pins[pid] = Pin(pid, list(blocks), expiry, owner, tag)
        heapq.heappush(self._pin_heap, (expiry, pid))
        self.stats.pins_created += 1
        return pid

    def unpin(self, pid: int) -> bool:
        pin = self.pins.pop(pid, None)
        if pin is None:
            return False
        self._release(reversed(pin.blocks))
        return True

    def release_pins_of(self, owner: int) -> int:
        """Release every pin of ``owner`` (e.g. a program that ended)."""
        pids = [p.id for p in self.pins.values() if p.owner == owner]
        for pid in pids:
            self.unpin(pid)
        self.stats.pins_released += len(pids)
        return len(pids)

    def expire_pins(self, now: float) -> int:
        n = 0
        heap = self._pin_heap
        while heap and heap[0][0] <= now:
            _, pid = heapq.heappop(heap)
            if self.unpin(pid):
                n += 1
        self.stats.pins_expired += n
        return n

    def next_pin_expiry(self) -> float | None:
        heap = self._pin_heap
        while heap and heap[0][1] not in self.pins:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def reclaim_pins(self, n_blocks: int, key=None, enough=None) -> int:
        """Release pins until ``n_blocks`` are free (or ``enough()`` says so), in ``key``
        order (default: soonest expiry first; a policy may rank pins itself). Returns pins
        freed."""
        freed = 0
        order = sorted(self.pins.values(), key=key or (lambda p: (p.expiry, p.id)))
        for pin in order:
            if enough() if enough is not None else self.num_free >= n_blocks:
                break
            self.stats.pinned_blocks_reclaimed += len(pin.blocks)
            self.unpin(pin.id)
            freed += 1
        self.stats.pins_reclaimed += freed
        return freed

    # -- host tier ------------------------------------------------------------------------
    def can_swap_out(self, req: Request) -> bool:
        return self.host_used + len(req.blocks) <= self.num_host_blocks

    def swap_out(self, req: Request) -> list[int]:
        """Move ``req``'s KV to the host; returns the device block ids to copy from."""
        blocks = list(req.blocks)
        req.host_blocks = len(blocks)
        self.host_used += len(blocks)
        self.stats.swap_out_blocks += len(blocks)
        self.free(req)
        return blocks

    def swap_in(self, req: Request) -> list[int] | None:
        """Bring ``req``'s KV back; returns the new device block ids, or None if short."""
        n = req.host_blocks
        if not self.can_allocate(n):
            return None
        req.blocks = []
        self._take_blocks(n, req.blocks)
        self.host_used -= n
        self.stats.swap_in_blocks += n
        req.host_blocks = 0
        self.hashed_count[req.id] = 0
        return list(req.blocks)

    def drop_host(self, req: Request) -> None:
        """Forget a swapped request's host copy (it ended while swapped)."""
        self.host_used -= req.host_blocks
        req.host_blocks = 0

    # -- invariants -----------------------------------------------------------------------
    def check(self, live: list[Request]) -> None:
        """Assert conservation: every block free, cached or owned; refs match holders."""
        expected = [0] * self.num_blocks
        for r in live:
            for b in r.blocks:
                expected[b] += 1
        for p in self.pins.values():
            for b in p.blocks:
                expected[b] += 1
        if expected != self.ref:
            bad = [b for b in range(self.num_blocks) if expected[b] != self.ref[b]][:5]
            raise AssertionError(f"block refcounts disagree with holders at {bad}")
        free_set = set(self.free_plain)
        if len(free_set) != len(self.free_plain):
            raise AssertionError("a block is twice in the free list")
        for b in range(self.num_blocks):
            states = (self.ref[b] > 0) + (b in free_set) + (b in self.cached)
            if states != 1:
                raise AssertionError(f"block {b} is in {states} states (ref={self.ref[b]})")
            if b in free_set and self.block_hash[b] is not None:
                raise AssertionError(f"free block {b} still has a hash")
            if b in self.cached and self.block_hash[b] is None:
                raise AssertionError(f"cached block {b} has no hash")
        for h, b in self.hash_to_block.items():
            if self.block_hash[b] != h:
                raise AssertionError(f"hash map points at block {b} whose hash differs")
        if not 0 <= self.host_used <= max(self.num_host_blocks, 0):
            raise AssertionError(f"host tier usage {self.host_used} out of range")
