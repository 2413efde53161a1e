"""PagedKVCache: swap moves exact bytes for every layer, the host pool is bounded and
reclaims copies of requests that ended while swapped, bad ids are named."""

from __future__ import annotations

import pytest

import torch

from sluice.core.content import Content
from sluice.core.request import Request, RequestState
from sluice.executors.torch.attention import SeqSpan, build_meta
from sluice.executors.torch.kv_cache import PagedKVCache


def cache(host: int = 4) -> PagedKVCache:
    c = PagedKVCache(num_layers=3, num_blocks=8, block_size=2, kv_heads=2, head_dim=4,
                     dtype=torch.float32, device=torch.device("cpu"), num_host_blocks=host)
    c.data.copy_(torch.randn(c.data.shape, generator=torch.Generator().manual_seed(0)))
    return c


def req(rid: int) -> Request:
    return Request(id=rid, arrival=0.0, content=Content(tokens=[1, 2]), max_tokens=1)


def test_swap_round_trip_into_other_blocks():
    c = cache()
    before = c.data[:, :, [1, 5]].clone()
    c.swap_out(7, [1, 5])
    c.data[:, :, [1, 5]] = 0.0  # the ids are reused by someone else
    assert c.free_host_blocks == 2 and c.is_swapped(7)
    c.swap_in(7, [3, 0])
    assert torch.equal(c.data[:, :, [3, 0]], before)
    assert c.free_host_blocks == 4 and not c.is_swapped(7)


def test_host_pool_is_bounded_and_reclaims_ended_requests():
    c = cache(host=2)
    r = req(1)
    c.swap_out(1, [0, 1], owner=r)
    with pytest.raises(ValueError, match="needs 1 host blocks, 0 free"):
        c.swap_out(2, [2], owner=req(2))
    r.state = RequestState.ABORTED  # aborted while swapped, nobody called drop()
    c.swap_out(2, [2], owner=req(2))
    assert not c.is_swapped(1) and c.is_swapped(2)


def test_swap_errors_name_the_request():
    c = cache()
    with pytest.raises(ValueError, match="request 3: no KV"):
        c.swap_in(3, [0])
    with pytest.raises(ValueError, match="outside 0..7"):
        c.swap_out(3, [9])
    with pytest.raises(ValueError, match="duplicate"):
        c.swap_out(3, [1, 1])
    c.swap_out(3, [1, 2])
    with pytest.raises(ValueError, match="1 device blocks for 2"):
        c.swap_in(3, [4])


def test_slot_mapping_follows_block_table():
    spans = [SeqSpan(row=0, start=3, n=2, blocks=[6, 2, 5]), SeqSpan(row=2, start=1, n=1,
                                                                      blocks=[4])]
    meta = build_meta(spans, block_size=2, device=torch.device("cpu"))
    # positions 3,4 of the first sequence: block 2 slot 1, block 5 slot 0; then block 4 slot 1
    assert meta.slot_mapping.tolist() == [2 * 2 + 1, 5 * 2 + 0, 4 * 2 + 1]
    assert meta.decode_table.tolist() == [[4]]
    assert meta.decode_mask.flatten().tolist() == [True, True]
    assert meta.prefills[0].table.tolist() == [6, 2, 5] and meta.prefills[0].ctx == 5
    assert meta.prefills[0].mask.tolist() == [[True] * 4 + [False], [True] * 5]
