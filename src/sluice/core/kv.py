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
from dataclasses import dataclass, field

import numpy as np

from sluice.core.lru import BlockQueue
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
    """Block manager for one replica. Block ids are ``0 .. num_blocks-1``.

    State lives in numpy arrays so that a request's ~100 blocks are taken, registered and
    released in a handful of vectorised operations (the simulator's hottest path); single-block
    operations (a decoder crossing a block boundary) take a scalar path instead.

    * ``ref`` — reference counts; ``block_hash``/``has_hash`` — a block's registered hash;
    * the plain free list is a stack (``_free_stack[:_free_top]``, popped from the top);
    * the LRU of cached blocks is a ``BlockQueue`` (``core/lru.py``): a queue with lazy
      deletion, so a hit removes a block from the middle in O(1);
    * ``hash_to_block`` maps hash -> block, also lazily: an entry is live only while that block
      still has that hash (eviction just clears ``has_hash``); stale entries are swept when the
      map outgrows the cache.
    """

    _SCALAR = 8  # below this many blocks, Python scalar operations beat numpy's call overhead

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
        self.ref = np.zeros(num_blocks, dtype=np.int64)
        self.block_hash = np.zeros(num_blocks, dtype=np.int64)
        self.has_hash = np.zeros(num_blocks, dtype=bool)
        self._free_stack = np.arange(num_blocks - 1, -1, -1, dtype=np.int64)  # top -> block 0
        self._free_top = num_blocks
        self.lru = BlockQueue(num_blocks)
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
        return self._free_top + self.lru.size

    @property
    def num_used(self) -> int:
        return self.num_blocks - self._free_top - self.lru.size

    @property
    def num_cached(self) -> int:
        return self.lru.size

    @property
    def pinned_blocks(self) -> int:
        """Distinct blocks held by pins (a program's pins may overlap)."""
        return len({b for p in self.pins.values() for b in p.blocks})

    @property
    def free_plain(self) -> list[int]:
        """Plain free blocks, bottom of the stack first (inspection and checks only)."""
        return self._free_stack[: self._free_top].tolist()

    @property
    def cached(self) -> list[int]:
        """Evictable cached blocks, least recently released first (inspection only)."""
        return self.lru.live().tolist()

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def unreferenced(self, blocks: list[int]) -> int:
        """How many of ``blocks`` nobody holds (cached ones an allocation could evict)."""
        if not blocks:
            return 0
        return int(np.count_nonzero(self.ref[blocks] == 0))

    # -- prefix cache ---------------------------------------------------------------------
    def lookup(self, req: Request) -> list[int]:
        """Cached blocks matching the longest prefix of ``req`` (at least one token left to
        compute, as vLLM: the last token's logits are needed)."""
        if not self.prefix_caching:
            return []
        if req.content.private:
            return self._own_hits(req)
        limit = req.num_tokens - 1
        hashes = req.content.block_hashes(self.block_size, limit)
        hits: list[int] = []
        h2b = self.hash_to_block
        has = self.has_hash
        bh = self.block_hash
        for h in hashes[: limit // self.block_size]:
            b = h2b.get(h)
            if b is None or not has[b] or bh[b] != h:
                break
            hits.append(b)
        return hits

    def _own_hits(self, req: Request) -> list[int]:
        """Private content: only the request's own blocks, left cached when it was preempted,
        can hold its prefix; they still do where their stamp survived."""
        own = req.own_blocks
        if not own:
            return []
        own = own[: (req.num_tokens - 1) // self.block_size]
        if not own:
            return []
        arr = np.asarray(own, dtype=np.int64)
        ok = self.has_hash[arr] & (self.block_hash[arr] == _stamps(req, 0, len(arr)))
        n = len(arr) if ok.all() else int(np.argmin(ok))
        return own[:n]

    def acquire_hits(self, req: Request, hits: list[int]) -> None:
        """Take references on prefix hits and make them the head of ``req``'s block table."""
        if hits:
            self._hold(hits)
        req.blocks = list(hits)
        req.num_computed = len(hits) * self.block_size
        self.stats.lookup_tokens += req.num_tokens
        self.stats.hit_tokens += req.num_computed
        self.hashed_count[req.id] = len(hits)

    def _hold(self, blocks: list[int]) -> None:
        """One more reference on each of ``blocks`` (distinct); cached ones leave the LRU."""
        arr = np.asarray(blocks, dtype=np.int64)
        ref = self.ref
        idle = arr[ref[arr] == 0]
        if len(idle):
            self.lru.remove(idle)
        ref[arr] += 1

    # -- allocation -----------------------------------------------------------------------
    def can_allocate(self, n_blocks: int, *, admission: bool = False) -> bool:
        reserve = self.watermark_blocks if admission else 0
        return self._free_top + self.lru.size - n_blocks >= reserve

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
        return True

    def take(self, need: int) -> list[int]:
        """``need`` blocks for holders that are not requests (bulk allocation of a
        fast-forward run, which hands them out itself); the caller checked capacity."""
        out: list[int] = []
        self._take_blocks(need, out)
        return out

    def _take_blocks(self, need: int, out: list[int]) -> None:
        """Append ``need`` blocks to ``out``: plain free ones first, then evict LRU cached."""
        top = self._free_top
        plain = need if need < top else top
        if 0 < plain < self._SCALAR:  # a few decoders crossing block boundaries
            stack, ref = self._free_stack, self.ref
            for i in range(top - 1, top - 1 - plain, -1):
                b = stack.item(i)
                ref[b] = 1
                out.append(b)
            self._free_top = top - plain
        elif plain:
            seg = self._free_stack[top - plain: top][::-1]
            self.ref[seg] = 1
            out.extend(seg.tolist())
            self._free_top = top - plain
        rest = need - plain
        if rest:
            self.stats.evicted_cached += rest
            out.extend(self._evict(rest))
        used = self.num_used
        if used > self.stats.peak_used:
            self.stats.peak_used = used

    def _evict(self, n: int) -> list[int]:
        """Pop the ``n`` least recently released cached blocks; their hashes are dropped
        (their ``hash_to_block`` entries go stale)."""
        if n < self._SCALAR:  # a few decoders crossing block boundaries: the common case
            out = []
            has, ref, pop_one = self.has_hash, self.ref, self.lru.pop_one
            for _ in range(n):
                b = pop_one()
                has[b] = False
                ref[b] = 1
                out.append(b)
            return out
        blocks = self.lru.pop(n)
        self.has_hash[blocks] = False
        self.ref[blocks] = 1
        return blocks.tolist()

    def commit(self, req: Request) -> None:
        """Register the hashes of ``req``'s newly full computed blocks in the prefix cache.
        Private content waits for ``free``: nobody else can look it up, and the request
        itself only after it let its blocks go."""
        if not req.content.private:
            self._register(req)

    def _register(self, req: Request, arr: np.ndarray | None = None) -> None:
        """Index ``req``'s full computed blocks not indexed yet (``arr``: its block table as
        an array, when the caller has one)."""
        if not self.prefix_caching:
            return
        n_full = req.num_computed // self.block_size
        done = self.hashed_count.get(req.id, 0)
        if n_full <= done:
            return
        self.hashed_count[req.id] = n_full
        if req.content.private:  # nobody else can look these up: stamp, do not index
            blocks = (arr[done:n_full] if arr is not None
                      else np.array(req.blocks[done:n_full], dtype=np.int64))
            self.block_hash[blocks] = _stamps(req, done, n_full)
            self.has_hash[blocks] = True
            return
        hashes = req.content.block_hashes(self.block_size, req.num_computed)[done:n_full]
        blocks = req.blocks[done:n_full]
        h2b = self.hash_to_block
        known = list(map(h2b.get, hashes))
        if known.count(None) != len(known):  # some content was computed twice: first wins
            keep = [i for i, b in enumerate(known) if b is None or not self._is_live(b, hashes[i])]
            hashes = [hashes[i] for i in keep]
            blocks = [blocks[i] for i in keep]
        if not blocks:
            return
        h2b.update(zip(hashes, blocks))
        self.block_hash[blocks] = hashes
        self.has_hash[blocks] = True
        if len(h2b) > 4 * self.num_blocks + 4096:
            self._sweep_hash_map()

    def _is_live(self, block: int, h: int) -> bool:
        return bool(self.has_hash[block]) and int(self.block_hash[block]) == h

    def _sweep_hash_map(self) -> None:
        """Drop stale hash entries (evicted blocks): amortised O(1) per registration."""
        live = np.flatnonzero(self.has_hash)
        self.hash_to_block = dict(zip(self.block_hash[live].tolist(), live.tolist()))

    def free(self, req: Request, *, may_return: bool = False) -> None:
        """Drop ``req``'s references, tail first (its last blocks become the first evicted).

        Full blocks not registered yet are registered first: the simulator defers a decoding
        request's output blocks to here, as no other request can name them before it ends.
        ``may_return`` (a recompute preemption): a private request remembers its blocks, the
        only place its prefix can be found again."""
        blocks = req.blocks
        if len(blocks) < self._SCALAR:
            self._register(req)
            self._release(blocks[::-1])
        else:  # one conversion serves both
            arr = np.array(blocks, dtype=np.int64)
            if not (req.content.private and self.prefix_caching and self._free_own(req, arr)):
                self._register(req, arr)
                self._release_array(arr[::-1])
        req.blocks = []
        req.own_blocks = blocks if may_return and req.content.private else None
        self.hashed_count.pop(req.id, None)

    def _free_own(self, req: Request, arr: np.ndarray) -> bool:
        """``free`` of private content that nobody else holds (the usual end of a replayed
        request), without masks: its hashed blocks are exactly its first ``num_computed //
        block_size`` (own hits and what is stamped now; later blocks were taken hash-free), so
        in release order (tail first) the unhashed tail goes to the free stack and the rest,
        last first, to the LRU — what ``_release_array`` does with masks. False (nothing
        changed) when another holder (a pin) shares a block."""
        ref = self.ref
        n_full = req.num_computed // self.block_size
        done = self.hashed_count.get(req.id, 0)
        if done > n_full or np.count_nonzero(ref[arr] - 1):
            return False
        self._register(req, arr)  # stamps blocks done..n_full-1
        ref[arr] = 0
        if n_full:
            self.lru.push(arr[n_full - 1::-1])
        self._push_free(arr[n_full:][::-1])
        return True

    def _release(self, blocks: list[int]) -> None:
        """One reference less on each of ``blocks`` (distinct, in release order)."""
        if not blocks:
            return
        if len(blocks) < self._SCALAR:
            for b in blocks:
                self._release_one(b)
            return
        self._release_array(np.asarray(blocks, dtype=np.int64))

    def _release_array(self, arr: np.ndarray) -> None:
        ref = self.ref
        left = ref[arr] - 1
        ref[arr] = left
        # count_nonzero: a fraction of any()/all()'s call overhead on arrays this small
        idle = arr if not np.count_nonzero(left) else arr[left == 0]  # usually nobody else
        n_idle = len(idle)
        if not n_idle:
            return
        hashed = self.has_hash[idle]
        n_hashed = np.count_nonzero(hashed)
        if n_hashed == n_idle:  # full blocks of one request: all to the LRU
            self.lru.push(idle)
            return
        if n_hashed:
            self.lru.push(idle[hashed])
            plain = idle[~hashed]
        else:
            plain = idle
        self._push_free(plain)

    def _push_free(self, plain: np.ndarray) -> None:
        """Put hash-free ``plain`` blocks on the free stack, the first one deepest."""
        top = self._free_top
        self._free_stack[top: top + len(plain)] = plain
        self._free_top = top + len(plain)

    def _release_one(self, b: int) -> None:
        r = self.ref[b] - 1
        self.ref[b] = r
        if r:
            return
        if self.has_hash[b]:
            self.lru.push(np.array([b], dtype=np.int64))
        else:
            self._free_stack[self._free_top] = b
            self._free_top += 1

    # -- pins -----------------------------------------------------------------------------
    def pin(self, blocks: list[int], expiry: float, owner: int | None = None,
            tag: str = "") -> int:
        """Hold ``blocks`` until ``expiry`` (virtual or wall seconds). Returns the pin id."""
        if blocks:
            arr = np.asarray(blocks, dtype=np.int64)
            idle = arr[self.ref[arr] == 0]
            free = idle[~self.lru.contains(idle)]
            if len(free):
                bad = int(free[0])
                raise ValueError(f"cannot pin free block {bad}: it holds no KV")
        pid = self._next_pin
        self._next_pin += 1
        if blocks:
            self._hold(blocks)
        self.pins[pid] = Pin(pid, list(blocks), expiry, owner, tag)
        heapq.heappush(self._pin_heap, (expiry, pid))
        self.stats.pins_created += 1
        return pid

    def unpin(self, pid: int) -> bool:
        pin = self.pins.pop(pid, None)
        if pin is None:
            return False
        self._release(pin.blocks[::-1])
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
        """Assert conservation: every block free, cached or owned; refs match holders.
        Vectorised: the simulator runs it after every simulation."""
        nb = self.num_blocks
        holders = [r.blocks for r in live] + [p.blocks for p in self.pins.values()]
        held = np.concatenate([np.asarray(h, dtype=np.int64) for h in holders if h]
                              or [np.zeros(0, dtype=np.int64)])
        expected = np.bincount(held, minlength=nb)
        if not np.array_equal(expected, self.ref):
            bad = np.flatnonzero(expected != self.ref)[:5].tolist()
            raise AssertionError(f"block refcounts disagree with holders at {bad}")
        free = np.bincount(self._free_stack[: self._free_top], minlength=nb)
        if free.max(initial=0) > 1:
            raise AssertionError("a block is twice in the free list")
        self.lru.check()
        cached = np.bincount(self.lru.live(), minlength=nb)
        states = (self.ref > 0).astype(np.int64) + free + cached
        if np.any(states != 1):
            b = int(np.flatnonzero(states != 1)[0])
            raise AssertionError(f"block {b} is in {int(states[b])} states "
                                 f"(ref={int(self.ref[b])})")
        if np.any(self.has_hash & (free > 0)):
            raise AssertionError("a free block still has a hash")
        if np.any(~self.has_hash & (cached > 0)):
            raise AssertionError("a cached block has no hash")
        h2b = self.hash_to_block
        if h2b:
            for b in np.flatnonzero(self.has_hash).tolist():
                if h2b.get(int(self.block_hash[b]), b) != b:
                    raise AssertionError(f"block {b}'s hash is registered to another block")
        if not 0 <= self.host_used <= max(self.num_host_blocks, 0):
            raise AssertionError(f"host tier usage {self.host_used} out of range")


def _stamps(req: Request, start: int, stop: int) -> np.ndarray:
    """Stand-in hashes of a private request's blocks ``start..stop-1``: unique per (request,
    block), negative like half of all Python hashes; compared only against its own blocks."""
    base = -1 - (req.id << 24)  # ~x == -1 - x
    return np.arange(base - start, base - stop, -1, dtype=np.int64)
