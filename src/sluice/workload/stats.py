"""``sluice trace stats``: one streaming pass that summarises a trace.

Why these figures: rows/span/rate and count-CV at 1/10/60 s say how bursty the load is at the
time scales a scheduler reacts on; exact length percentiles come from integer histograms (so
memory is bounded by the longest length, not the number of rows); the prefix-reuse ceiling is
the share of 512-token blocks already seen earlier in the trace (an infinite cache's hit rate,
Mooncake conversation: 36.6%); turn chains are recovered from hash prefixes (a request whose
blocks start with all *full* blocks of an earlier request continues that conversation) or
from session ids (BurstGPT v3).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Iterable

import numpy as np

from sluice.workload.trace_readers import TraceRecord
from sluice.workload.traces import Trace

BINS = (1.0, 10.0, 60.0)
PCTS = (50, 90, 99)


class _Hist:
    """Exact integer histogram; percentiles match numpy's 'inverted_cdf' on the raw values."""

    def __init__(self) -> None:
        self.counts = np.zeros(1024, dtype=np.int64)
        self.n = 0
        self.total = 0

    def add(self, x: int) -> None:
        if x >= len(self.counts):
            grown = np.zeros(max(x + 1, 2 * len(self.counts)), dtype=np.int64)
            grown[: len(self.counts)] = self.counts
            self.counts = grown
        self.counts[x] += 1
        self.n += 1
        self.total += x

    def summary(self) -> dict[str, float]:
        if self.n == 0:
            return {}
        cum = np.cumsum(self.counts)
        out: dict[str, float] = {"mean": self.total / self.n,
                                 "min": int(np.argmax(self.counts > 0)),
                                 "max": int(np.nonzero(self.counts)[0][-1])}
        for p in PCTS:
            out[f"p{p}"] = int(np.searchsorted(cum, math.ceil(p / 100 * self.n)))
        return out


class _CountCV:
    """CV of request counts per fixed bin (empty bins included), streaming over sorted times."""

    def __init__(self, width: float) -> None:
        self.width = width
        self.bin = 0
        self.count = 0
        self.s1 = 0.0
        self.s2 = 0.0
        self.nbins = 0

    def add(self, t: float) -> None:
        b = int(t // self.width)
        if b != self.bin:
            self._close(b - self.bin - 1)
            self.bin = b
        self.count += 1

    def _close(self, empty: int) -> None:
        self.s1 += self.count
        self.s2 += self.count ** 2
        self.nbins += 1 + max(empty, 0)
        self.count = 0

    def cv(self) -> float | None:
        self._close(0)
        if self.nbins < 2 or self.s1 == 0:
            return None
        mean = self.s1 / self.nbins
        var = max(self.s2 / self.nbins - mean ** 2, 0.0)
        return math.sqrt(var) / mean


class _Chains:
    """Turn chains: parent = earlier request whose full blocks prefix this one's blocks."""

    def __init__(self) -> None:
        self.depth_of_end: dict[tuple[int, int], int] = {}  # (last full id, #full) -> depth
        self.depths: Counter[int] = Counter()
        self.sessions: Counter[str] = Counter()
        self.seen_blocks: set[int] = set()
        self.blocks = 0
        self.reused = 0

    def add(self, rec: TraceRecord) -> None:
        if rec.session is not None:
            self.sessions[rec.session] += 1
        ids = rec.hash_ids
        if not ids:
            return
        self.blocks += len(ids)
        seen = self.seen_blocks
        self.reused += sum(1 for h in ids if h in seen)
        seen.update(ids)
        depth = 1
        # Longest earlier full-block prefix first, of >= 2 blocks: a single shared block is a
        # system prompt (Mooncake block 0), not a conversation.
        for k in range(len(ids) - 1, 1, -1):
            d = self.depth_of_end.get((ids[k - 1], k))
            if d is not None:
                depth = d + 1
                break
        self.depths[depth] += 1
        full = rec.input_len // rec.block_size
        if full >= 1:
            key = (ids[full - 1], full)
            self.depth_of_end[key] = max(depth, self.depth_of_end.get(key, 0))

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.blocks:
            out["prefix_reuse_ceiling"] = self.reused / self.blocks
            out["blocks"] = self.blocks
            n = sum(self.depths.values())
            chains = self.depths.get(1, 0)
            out["chains"] = {"roots": chains, "follow_ups": n - chains,
                             "mean_requests_per_chain": n / chains if chains else None,
                             "max_depth": max(self.depths)}
        if self.sessions:
            sizes = np.fromiter(self.sessions.values(), dtype=np.int64)
            out["sessions"] = {"count": len(sizes), "mean_turns": float(sizes.mean()),
                               "max_turns": int(sizes.max())}
        return out


def trace_stats(trace: Trace) -> dict[str, Any]:
    """Summary of a whole trace (order problems counted, not fatal)."""
    return summarize(trace.records(check_order=False), trace)


def summarize(records: Iterable[TraceRecord], trace: Trace | None = None) -> dict[str, Any]:
    ins, outs, chains = _Hist(), _Hist(), _Chains()
    cvs = [_CountCV(w) for w in BINS]
    n, first, last, prev = 0, None, None, None
    s1 = s2 = 0.0
    for rec in records:
        n += 1
        ins.add(rec.input_len)
        outs.add(rec.output_len)
        chains.add(rec)
        t = rec.arrival
        if t is None:
            continue
        first = t if first is None else first
        if prev is not None and t >= prev:
            gap = t - prev
            s1 += gap
            s2 += gap * gap
        prev = t if prev is None else max(prev, t)
        last = prev
        for c in cvs:
            c.add(t - first)
    out: dict[str, Any] = {"rows": n}
    if trace is not None:
        out.update(name=trace.name, path=str(trace.path), format=trace.fmt,
                   skipped_rows=dict(trace.skipped), dropped_rows=dict(trace.dropped),
                   non_monotone_timestamps=trace.non_monotone)
    if first is not None and n > 1:
        span = last - first
        mean_gap = s1 / (n - 1)
        var = max(s2 / (n - 1) - mean_gap ** 2, 0.0)
        out.update(span_s=span, mean_rate=(n - 1) / span if span > 0 else None,
                   iat_cv=math.sqrt(var) / mean_gap if mean_gap > 0 else None,
                   count_cv={f"{int(w)}s": c.cv() for w, c in zip(BINS, cvs)})
    out["input_tokens"] = ins.summary()
    out["output_tokens"] = outs.summary()
    out.update(chains.summary())
    out.setdefault("prefix_reuse_ceiling", 0.0 if n else None)
    return out
