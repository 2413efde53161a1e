"""A sample kept as sorted distinct values with counts.

Why: a fast-forwarded run of ``k`` decode steps over a batch of ``b`` requests yields ``k``
distinct inter-token gaps, each seen ``b`` times. Keeping (value, count) instead of ``k * b``
floats makes the ITL sample of a million-request run fit in memory, and sorting the distinct
values is much cheaper than sorting every token's gap. Statistics are those of the expanded
sample (percentiles with numpy's default "linear" rule), and are computed on the canonical
form (distinct sorted values, merged counts), so how values were recorded — one by one or in
runs — cannot change a bit of the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(slots=True, frozen=True)
class WeightedSample:
    values: np.ndarray  # distinct, ascending, no NaN
    counts: np.ndarray  # int64, > 0

    @classmethod
    def of(cls, values: np.ndarray, counts: np.ndarray | None = None) -> "WeightedSample":
        """Canonical form of ``values`` (each seen ``counts`` times, default once); NaNs are
        dropped."""
        values = np.asarray(values, dtype=np.float64)
        keep = ~np.isnan(values)
        values = values[keep]
        if counts is None:
            uniq, n = np.unique(values, return_counts=True)
            return cls(uniq, n.astype(np.int64))
        counts = np.asarray(counts, dtype=np.int64)[keep]
        uniq, inverse = np.unique(values, return_inverse=True)
        merged = np.bincount(inverse, weights=counts, minlength=len(uniq))
        return cls(uniq, merged.astype(np.int64))

    @property
    def size(self) -> int:
        return int(self.counts.sum())

    def __len__(self) -> int:
        return self.size

    def max(self) -> float:
        return float(self.values[-1]) if len(self.values) else float("nan")

    def expand(self) -> np.ndarray:
        """Every value, ``count`` times, ascending."""
        return np.repeat(self.values, self.counts)

    def mean(self) -> float:
        # a plain (pairwise) sum, not np.dot: a dot of this size wakes a multi-threaded BLAS,
        # whose spinning threads cost ~0.1 s on a busy 2-core host (measured)
        return float(np.add.reduce(self.values * self.counts) / self.size)

    def std(self) -> float:
        """Population standard deviation (numpy's ``std`` default)."""
        dev = self.values - self.mean()
        return float(np.sqrt(np.add.reduce(dev * dev * self.counts) / self.size))

    def percentile(self, q: float) -> float:
        """``np.percentile(self.expand(), q)`` without expanding."""
        n = self.size
        pos = q / 100.0 * (n - 1)
        lo = int(np.floor(pos))
        t = pos - lo
        ends = np.cumsum(self.counts)  # ends[i]: index one past the last copy of value i
        a = self.values[np.searchsorted(ends, lo, side="right")]
        b = self.values[np.searchsorted(ends, min(lo + 1, n - 1), side="right")]
        # numpy's _lerp: exact at both ends of the interval
        return float(b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t)


def itl_sample(scheduler) -> WeightedSample:
    """A scheduler's inter-token latencies (one by one, fast-forwarded runs' gaps times their
    batch size, and compacted ones with their counts) as one weighted sample."""
    one_by_one, repeats = equal_runs(np.asarray(scheduler.itls, dtype=np.float64))
    gaps, counts = [one_by_one], [repeats]
    run_ends, run_lens, run_batches = [], [], []
    for values, seen in scheduler.itl_runs:  # (gaps, counts) or (a run's step ends, batch)
        if isinstance(seen, np.ndarray):
            gaps.append(values)
            counts.append(seen.astype(np.int64))
        else:
            run_ends.append(values)
            run_lens.append(len(values))
            run_batches.append(seen)
    if run_ends:
        gaps.append(run_gaps(run_ends, run_lens))
        counts.append(np.repeat(np.asarray(run_batches, dtype=np.int64),
                                np.asarray(run_lens) - 1))
    return WeightedSample.of(np.concatenate(gaps), np.concatenate(counts))


def equal_runs(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run-length encoding of ``x``: the decoders of one step append the same gap one after
    another, so this shrinks the one-by-one ITLs several-fold in O(n) before the sort."""
    if not len(x):
        return x, np.zeros(0, dtype=np.int64)
    change = np.empty(len(x), dtype=bool)
    change[0] = True
    np.not_equal(x[1:], x[:-1], out=change[1:])
    starts = np.flatnonzero(change)
    return x[starts], np.diff(starts, append=len(x))


def run_gaps(ends: list[np.ndarray], lens: list[int]) -> np.ndarray:
    """Step gaps of every run, in order: one ``diff`` over all runs' step end times, less
    the differences that straddle two runs (each run's first step's gap is recorded one by
    one, from its requests' own last tokens)."""
    diffs = np.diff(np.concatenate(ends))
    straddle = np.cumsum(np.asarray(lens[:-1], dtype=np.int64)) - 1
    return np.delete(diffs, straddle)


def merged(samples: list[WeightedSample]) -> WeightedSample:
    """One sample of several (data-parallel ranks)."""
    return WeightedSample.of(np.concatenate([s.values for s in samples]),
                             np.concatenate([s.counts for s in samples]))
