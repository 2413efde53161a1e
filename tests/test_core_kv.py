"""KV cache: allocation, prefix reuse, LRU eviction, pins, host tier, conservation."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.core.kv import KVCache
from conftest import make_request


def test_free_blocks_become_cached_and_are_reused():
    kv = KVCache(8, 4)
    r = make_request(0, 0.0, 10, 1, key=1)
    assert kv.lookup(r) == []
    kv.acquire_hits(r, [])
    assert kv.allocate(r, 10)
    assert len(r.blocks) == 3 and kv.num_free == 5
    r.num_computed = 10
    kv.commit(r)  # two full blocks get hashes
    kv.free(r)
    assert kv.num_free == 8 and len(kv.cached) == 2
    twin = make_request(1, 0.0, 10, 1, key=1)
    hits = kv.lookup(twin)
    assert hits == r_blocks_prefix(kv, 2)
    kv.acquire_hits(twin, hits)
    assert twin.num_computed == 8
    kv.check([twin])


def r_blocks_prefix(kv, n):
    return [kv.hash_to_block[h] for h in
            make_request(9, 0.0, 10, 1, key=1).content.block_hashes(kv.block_size, 8)[:n]]


def test_lookup_leaves_one_token_to_compute():
    kv = KVCache(8, 4)
    r = make_request(0, 0.0, 8, 1, key=1)
    kv.acquire_hits(r, [])
    kv.allocate(r, 8)
    r.num_computed = 8
    kv.commit(r)
    kv.free(r)
    again = make_request(1, 0.0, 8, 1, key=1)
    assert len(kv.lookup(again)) == 1  # 8 tokens cached, but the last must be recomputed


def test_lru_evicts_oldest_and_tail_first():
    kv = KVCache(4, 1)
    a = make_request(0, 0.0, 2, 1, key=1)
    kv.acquire_hits(a, [])
    kv.allocate(a, 2)
    a.num_computed = 2
    kv.commit(a)
    kv.free(a)  # its tail block is freed first, so it is the older one in the LRU
    b = make_request(1, 0.0, 3, 1, key=2)
    kv.acquire_hits(b, [])
    assert kv.allocate(b, 3)  # 2 free + 1 evicted
    assert kv.stats.evicted_cached == 1
    head = make_request(2, 0.0, 2, 1, key=1)
    assert len(kv.lookup(head)) == 1  # block 0 of `a` survived, its tail did not
    kv.check([b])


def test_pins_expire_and_reclaim():
    kv = KVCache(4, 1)
    a = make_request(0, 0.0, 3, 1, key=1)
    kv.acquire_hits(a, [])
    kv.allocate(a, 3)
    pid = kv.pin(a.blocks[:2], expiry=5.0, owner=7)
    kv.free(a)
    assert kv.num_free == 2
    assert kv.expire_pins(4.9) == 0 and kv.expire_pins(5.0) == 1
    assert kv.num_free == 4 and pid not in kv.pins
    b = make_request(1, 0.0, 3, 1, key=2)
    kv.acquire_hits(b, [])
    kv.allocate(b, 3)
    kv.pin(b.blocks[:2], expiry=9.0, owner=3)
    kv.pin(b.blocks[2:], expiry=8.0, owner=4)
    kv.free(b)
    assert kv.num_free == 1
    assert kv.reclaim_pins(2) == 1 and kv.num_free == 2  # soonest expiry goes first
    assert kv.release_pins_of(3) == 1 and kv.num_free == 4
    kv.check([])


def test_swap_round_trip_counts_host_blocks():
    kv = KVCache(4, 2, num_host_blocks=3)
    a = make_request(0, 0.0, 5, 1, key=1)
    kv.acquire_hits(a, [])
    kv.allocate(a, 5)
    assert kv.can_swap_out(a)
    out = kv.swap_out(a)
    assert len(out) == 3 and kv.host_used == 3 and kv.num_free == 4
    back = kv.swap_in(a)
    assert back is not None and len(back) == 3 and kv.host_used == 0
    kv.check([a])


ops = st.lists(st.tuples(st.sampled_from(["alloc", "free", "pin", "expire", "swap"]),
                         st.integers(0, 5), st.integers(1, 40)), max_size=60)


@settings(max_examples=150, deadline=None)
@given(ops=ops, bs=st.sampled_from([1, 4, 16]), blocks=st.integers(4, 40))
def test_random_operations_conserve_blocks(ops, bs, blocks):
    """Whatever happens, every block is free, cached or owned, and refs match holders."""
    kv = KVCache(blocks, bs, num_host_blocks=blocks)
    live: dict[int, object] = {}
    swapped: dict[int, object] = {}
    t = 0.0
    for op, slot, n in ops:
        t += 1.0
        if op == "alloc":
            r = live.get(slot)
            if r is None:
                if slot in swapped:
                    r = swapped.pop(slot)
                    if kv.swap_in(r) is None:
                        swapped[slot] = r
                        continue
                else:
                    r = make_request(slot, 0.0, 200, 1, key=slot % 3)
                    kv.acquire_hits(r, kv.lookup(r))
                live[slot] = r
            if kv.allocate(r, min(r.num_computed + n, 200)):
                r.num_computed = min(r.num_computed + n, 200)
                kv.commit(r)
        elif op == "free" and slot in live:
            kv.free(live.pop(slot))
        elif op == "pin" and slot in live and live[slot].blocks:
            kv.pin(live[slot].blocks[: n % 4 + 1], expiry=t + n % 5)
        elif op == "expire":
            kv.expire_pins(t)
        elif op == "swap" and slot in live and kv.can_swap_out(live[slot]):
            r = live.pop(slot)
            kv.swap_out(r)
            swapped[slot] = r
        kv.check(list(live.values()))
        assert kv.num_free + kv.num_used == blocks


def _private(rid: int, prompt: int) -> "Request":
    from sluice.core.content import Content
    from sluice.core.request import Request
    return Request(id=rid, arrival=0.0, content=Content(segments=[(10_000 + rid, prompt)],
                                                         private=True), max_tokens=4)


def _run_to_free(kv, r, *, may_return=False):
    kv.acquire_hits(r, kv.lookup(r))
    assert kv.allocate(r, r.num_tokens)
    r.num_computed = r.num_tokens
    kv.commit(r)
    kv.free(r, may_return=may_return)


def test_private_content_stays_out_of_the_shared_index_but_finds_itself_again():
    kv = KVCache(16, 4)
    r = _private(0, 10)
    _run_to_free(kv, r, may_return=True)  # preempted: its 2 full blocks stay cached
    assert kv.hash_to_block == {} and kv.num_cached == 2
    r.num_computed = 0
    assert len(kv.lookup(r)) == 2  # its own blocks, found again
    other = _private(1, 10)
    assert kv.lookup(other) == []
    kv.acquire_hits(r, kv.lookup(r))
    kv.check([r])


def test_private_self_hits_stop_where_a_block_was_evicted():
    kv = KVCache(4, 4)
    r = _private(0, 13)  # 3 full blocks + 1 partial
    _run_to_free(kv, r, may_return=True)  # tail first: tokens 8..11 are the oldest cached
    r.num_computed = 0
    assert len(kv.lookup(r)) == 3
    squatter = _private(1, 8)  # the partial block's slot, then evicts tokens 8..11
    _run_to_free(kv, squatter)
    assert kv.stats.evicted_cached == 1
    assert len(kv.lookup(r)) == 2
    kv.check([])


def test_private_content_cannot_be_continued():
    import pytest
    with pytest.raises(ValueError, match="private"):
        _private(0, 8).content.copy()


def test_stale_hash_entries_are_swept_and_the_lru_compacts():
    """Eviction leaves hash-map entries and LRU slots stale on purpose; both are reclaimed."""
    kv = KVCache(4, 1)
    for rid in range(6000):
        r = make_request(rid, 0.0, 3, 1)
        _run_to_free(kv, r)
        assert len(kv.hash_to_block) <= 4 * kv.num_blocks + 4096 + 3
    assert kv.stats.evicted_cached > 0
    kv.check([])


def test_check_catches_a_lost_or_double_owned_block():
    import pytest
    kv = KVCache(8, 4)
    r = make_request(0, 0.0, 10, 1)
    kv.acquire_hits(r, [])
    kv.allocate(r, 10)
    kv.check([r])
    with pytest.raises(AssertionError, match="refcounts"):
        kv.check([])  # a holder the cache does not know about: blocks would be lost
    kv.ref[r.blocks[0]] += 1
    with pytest.raises(AssertionError, match="refcounts"):
        kv.check([r])
    kv.ref[r.blocks[0]] -= 1
    kv._free_stack[kv._free_top] = r.blocks[0]  # owned and free at once
    kv._free_top += 1
    with pytest.raises(AssertionError, match="states"):
        kv.check([r])


private_ops = st.lists(st.tuples(st.sampled_from(["alloc", "free", "preempt", "pin"]),
                                 st.integers(0, 4), st.integers(1, 60)), max_size=50)


@settings(max_examples=150, deadline=None)
@given(ops=private_ops, bs=st.sampled_from([1, 4, 16]), blocks=st.integers(16, 64))
def test_private_free_fast_path_matches_the_general_one(ops, bs, blocks):
    """``free`` of private content skips the masks of the general release; the cache must end
    in the same state either way: same free stack, same LRU order, refs and hashes, and the
    same own hits after a preemption (pins force the general path part of the time)."""
    caches = [KVCache(blocks, bs), KVCache(blocks, bs)]
    caches[1]._free_own = lambda req, arr: False  # the general path only
    live: list[dict[int, object]] = [{}, {}]
    t = 0.0
    for op, slot, n in ops:
        t += 1.0
        for kv, reqs in zip(caches, live):
            r = reqs.get(slot)
            if op == "alloc":
                if r is None:
                    r = reqs[slot] = _private(slot, 200)
                    kv.acquire_hits(r, kv.lookup(r))
                total = min(r.num_computed + n, 200)
                if kv.allocate(r, total):
                    r.num_computed = total
            elif op in ("free", "preempt") and r is not None:
                kv.free(r, may_return=op == "preempt")
                r.num_computed = 0
                if op == "free":
                    del reqs[slot]
            elif op == "pin" and r is not None and r.blocks:
                kv.pin(r.blocks[: n % 3 + 1], expiry=t + n % 4)
            kv.expire_pins(t)
        a, b = caches
        assert a.free_plain == b.free_plain and a.cached == b.cached
        assert np.array_equal(a.ref, b.ref) and np.array_equal(a.has_hash, b.has_hash)
        assert np.array_equal(a.block_hash[a.has_hash], b.block_hash[b.has_hash])
        for ra, rb in zip(live[0].values(), live[1].values()):
            if not ra.blocks:
                assert a.lookup(ra) == b.lookup(rb)
        a.check([r for r in live[0].values() if r.blocks])
