"""Block hashes identify exactly the tokens up to a block's end, however content was built."""

from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.core.content import Content


def _expand(segments):
    out = []
    for key, n in segments:
        out.extend((key, i) for i in range(n))
    return out


segs = st.lists(st.tuples(st.integers(1, 4), st.integers(1, 40)), min_size=1, max_size=5)


@settings(max_examples=200, deadline=None)
@given(base=segs, a_tail=segs, b_tail=segs, bs=st.sampled_from([1, 2, 4, 16]),
       grow=st.integers(0, 30), early=st.integers(0, 200))
def test_equal_hash_iff_equal_prefix(base, a_tail, b_tail, bs, grow, early):
    a = Content(segments=base + a_tail)
    b = Content(segments=base + b_tail)
    a.block_hashes(bs, early)  # hash part of it first: the cursor must stay right
    a.append_virtual(-7, grow)
    ha = a.block_hashes(bs, a.length)
    hb = b.block_hashes(bs, b.length)
    fresh = Content(segments=[tuple(s) for s in a.segments]).block_hashes(bs, a.length)
    assert fresh == ha
    ta, tb = _expand(a.segments), _expand(b.segments)
    for j in range(min(len(ha), len(hb))):
        assert (ha[j] == hb[j]) == (ta[: (j + 1) * bs] == tb[: (j + 1) * bs])


def test_token_content_hashes_chain():
    a = Content(tokens=list(range(40)))
    b = Content(tokens=list(range(32)) + [99] * 8)
    ha, hb = a.block_hashes(16, 40), b.block_hashes(16, 40)
    assert len(ha) == 2 and ha[:2] == hb[:2]
    a.append_tokens(list(range(40, 48)))
    b.append_tokens([99] * 8)
    assert a.block_hashes(16, 48)[2] != b.block_hashes(16, 48)[2]


def test_adjacent_same_key_segments_continue():
    """(k, 10) then (k, 6) is the run k0..k15, the same tokens as (k, 16)."""
    assert Content(segments=[(5, 10), (5, 6)]).block_hashes(16, 16) == \
        Content(segments=[(5, 16)]).block_hashes(16, 16)
