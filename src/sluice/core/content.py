"""Token content of a request, real or virtual, and the hash chain over its KV blocks.

Why a separate notion of content: traces rarely carry token ids. Azure gives lengths, Mooncake
gives 512-token ``hash_ids``, agent programs grow a context turn by turn. Prefix caching must
still see exactly the reuse those traces imply, at *any* block size. So content is either real
token ids (the torch engine) or a run of *segments* ``(key, length)``: segment ``key`` stands for
``length`` virtual tokens ``(key, 0) .. (key, length-1)``. Two requests share a prefix exactly
when their virtual token sequences agree, and the block hash of a block is computed from the
pieces of segments it covers, so a segment boundary never changes a hash.

Hashes are Python ``hash`` of tuples of ints: deterministic across runs (only str/bytes hashing
is salted), fast, and collision-safe enough for a cache key that is also checked by position.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

ROOT_HASH = 0x5157_1CE0


class Content:
    """Append-only token sequence with cached block hashes.

    ``tokens`` holds real ids when known; otherwise ``segments`` holds (key, length) runs.
    Generated tokens are appended with :meth:`append_tokens` (real) or as a growing output
    segment (virtual), so a later turn that resends prompt + output hits the same blocks.
    """

    __slots__ = ("tokens", "segments", "length", "private", "_hashes", "_block_size",
                 "_cursor")

    def __init__(self, tokens: Sequence[int] | None = None,
                 segments: Sequence[tuple[int, int]] | None = None, *,
                 private: bool = False) -> None:
        """``private=True`` promises that no other request will ever contain this content's
        first segment (a length-only trace's per-request prompt): then no other request can
        share any of its blocks, and the KV cache skips hashing and the global prefix index
        for it (a request can still hit its own blocks after a recompute preemption)."""
        if (tokens is None) == (segments is None):
            raise ValueError("content needs exactly one of tokens or segments")
        self.tokens: list[int] | None = list(tokens) if tokens is not None else None
        segs: list[list[int]] | None = None
        if segments is not None:
            segs = []
            for key, n in segments:
                if n < 0:
                    raise ValueError(f"segment length must be >= 0, got {n}")
                if n == 0:
                    continue
                if segs and segs[-1][0] == key:
                    segs[-1][1] += n
                else:
                    segs.append([int(key), int(n)])
        self.segments = segs
        self.private = private
        self.length = len(self.tokens) if self.tokens is not None else sum(n for _, n in segs)
        self._hashes: list[int] = []
        self._block_size = 0
        self._cursor: tuple[int, int, int] = (0, 0, ROOT_HASH)

    # -- growth ---------------------------------------------------------------------------
    def append_tokens(self, token_ids: Sequence[int]) -> None:
        """Append real token ids (engine) - only valid for token content."""
        assert self.tokens is not None
        self.tokens.extend(token_ids)
        self.length += len(token_ids)

    def append_virtual(self, key: int, n: int) -> None:
        """Append ``n`` virtual tokens of segment ``key`` (simulated output)."""
        if n <= 0:
            return
        if self.tokens is not None:
            # A real-token request in simulation: extend with deterministic pseudo ids.
            self.tokens.extend(((key * 1_000_003 + self.length + i) & 0x7FFF_FFFF)
                               for i in range(n))
        else:
            last = self.segments[-1]
            if last[0] == key:
                last[1] += n
            else:
                self.segments.append([key, n])
        self.length += n

    def copy(self) -> "Content":
        """A continuation's starting point (agent turns resend the context). Private content
        cannot be continued: its blocks were never entered in the shared prefix index."""
        if self.private:
            raise ValueError("private content cannot be copied into another request: build "
                             "the workload's content with shared keys (private=False)")
        if self.tokens is not None:
            return Content(tokens=self.tokens)
        return Content(segments=[(k, n) for k, n in self.segments])

    # -- hashing --------------------------------------------------------------------------
    def block_hashes(self, block_size: int, upto_tokens: int) -> list[int]:
        """Hashes of the full blocks among the first ``upto_tokens`` tokens (cached, chained)."""
        if block_size != self._block_size:
            self._hashes = []
            self._block_size = block_size
            self._cursor = (0, 0, ROOT_HASH)
        n_full = min(upto_tokens, self.length) // block_size
        hashes = self._hashes
        if len(hashes) >= n_full:
            return hashes
        parent = hashes[-1] if hashes else ROOT_HASH
        if self.tokens is not None:
            toks = self.tokens
            for b in range(len(hashes), n_full):
                parent = hash((parent, tuple(toks[b * block_size:(b + 1) * block_size])))
                hashes.append(parent)
            return hashes
        return self._segment_hashes(block_size, n_full)

    def _segment_hashes(self, bs: int, n_full: int) -> list[int]:
        """Block ``j``'s hash is a function of ``(sig, key, end)``: ``key`` is the segment
        holding the block's last token, ``end`` that token's offset + 1 in it, and ``sig``
        chains the (key, length) of every segment before it. That identifies exactly the
        tokens up to the block's end, like a hash chain, at a fraction of the cost. A cursor
        remembers where the last call stopped (segments only grow at the tail)."""
        hashes = self._hashes
        segs = self.segments
        pos = len(hashes) * bs  # first token of the first missing block
        i, start, sig = self._cursor
        limit = n_full * bs
        while len(hashes) < n_full:
            key, n = segs[i]
            seg_end = start + n
            first = pos + bs  # end of the next missing block
            if first <= seg_end:
                last_end = seg_end if seg_end < limit else limit
                hashes.extend(_block_hashes_in_segment(sig, key, first - start,
                                                       last_end - start, bs))
                pos = first + ((last_end - first) // bs) * bs
                if len(hashes) == n_full:
                    break
            sig = hash((sig, key, n))
            start = seg_end
            i += 1
        self._cursor = (i, start, sig)
        return hashes


_GOLDEN = np.int64(-7046029254386353131)  # 0x9E3779B97F4A7C15 as int64: odd, well mixed
_GOLDEN_INT = int(_GOLDEN)


def _block_hashes_in_segment(sig: int, key: int, first_end: int, last_end: int,
                             bs: int) -> list[int]:
    """Hashes of blocks ending at offsets ``first_end, first_end+bs, .. <= last_end`` of one
    segment: ``base + end * golden`` (mod 2^64) with ``base = hash((sig, key))``. Distinct ends
    give distinct values; different (sig, key) pairs collide with probability ~2^-64. One
    numpy expression per segment instead of a tuple hash per block."""
    base = hash((sig, key))
    if last_end - first_end < 8 * bs:
        return [_wrap(base + e * _GOLDEN_INT) for e in range(first_end, last_end + 1, bs)]
    ends = np.arange(first_end, last_end + 1, bs, dtype=np.int64)
    with np.errstate(over="ignore"):
        return (ends * _GOLDEN + np.int64(base)).tolist()


def _wrap(x: int) -> int:
    """Python int -> the int64 two's-complement value numpy's wrapping arithmetic gives."""
    x &= 0xFFFF_FFFF_FFFF_FFFF
    return x - (1 << 64) if x >= (1 << 63) else x
