"""Streaming transforms over trace records: time window, time scaling, subsampling, first N,
max-context filtering, and arrivals for length-only traces.

Why on records (before requests exist): each transform is a generator with O(1) state, so a
pipeline over a 10 M-row trace stays flat in memory, and filters that drop rows (window,
sample, max-context) run before request ids are assigned, keeping ids dense. Filters that
remove requests report how many and why (:class:`FilterReport`): the simulator, not the
workload, is where over-long requests are normally rejected and counted.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np

from sluice.errors import ConfigError
from sluice.workload.synth import ArrivalProcess
from sluice.workload.trace_readers import TraceRecord


@dataclass(slots=True)
class FilterReport:
    """What the transforms removed in the last pass, by reason (rows and input tokens)."""

    removed: Counter[str] = field(default_factory=Counter)
    removed_tokens: Counter[str] = field(default_factory=Counter)

    def add(self, reason: str, rec: TraceRecord) -> None:
        self.removed[reason] += 1
        self.removed_tokens[reason] += rec.input_len

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {r: {"rows": n, "input_tokens": self.removed_tokens[r]}
                for r, n in sorted(self.removed.items())}


def assign_arrivals(records: Iterable[TraceRecord], process: ArrivalProcess,
                    rng: np.random.Generator, start: float = 0.0) -> Iterator[TraceRecord]:
    """Give every record the next time of ``process`` (length-only traces, or to replace a
    trace's own arrival process while keeping its lengths)."""
    times = process.times(rng, start)
    for rec in records:
        t = next(times, None)
        if t is None:  # a finite process (stages) ran out
            return
        rec.arrival = t
        yield rec


def time_window(records: Iterable[TraceRecord], start: float, end: float | None
                ) -> Iterator[TraceRecord]:
    """Rows with start <= arrival < end, shifted so the window starts at 0."""
    for rec in records:
        t = rec.arrival if rec.arrival is not None else 0.0
        if t < start:
            continue
        if end is not None and t >= end:
            return  # records are in arrival order
        if rec.arrival is not None:
            rec.arrival = t - start
        yield rec


def scale_time(records: Iterable[TraceRecord], factor: float) -> Iterator[TraceRecord]:
    """Compress time by ``factor`` (rate x factor): arrival / factor."""
    if not (factor > 0 and math.isfinite(factor)):
        raise ConfigError(f"--rate-scale must be a positive number, got {factor}")
    for rec in records:
        if rec.arrival is not None:
            rec.arrival /= factor
        yield rec


def subsample(records: Iterable[TraceRecord], fraction: float, rng: np.random.Generator,
              report: FilterReport) -> Iterator[TraceRecord]:
    """Keep each row independently with probability ``fraction`` (thins the rate, keeps the
    arrival process's shape)."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"--sample must be in (0, 1], got {fraction}")
    for rec in records:
        if rng.random() < fraction:
            yield rec
        else:
            report.add("subsampled", rec)


def max_context(records: Iterable[TraceRecord], limit: int, report: FilterReport
                ) -> Iterator[TraceRecord]:
    """Drop rows whose prompt + output exceed ``limit`` tokens, counting them."""
    if limit < 2:
        raise ConfigError(f"max context must be >= 2 tokens, got {limit}")
    for rec in records:
        if rec.input_len + rec.output_len > limit:
            report.add(f"input+output > {limit} tokens", rec)
        else:
            yield rec


def head(records: Iterable[TraceRecord], n: int | None) -> Iterator[TraceRecord]:
    """The first ``n`` rows (``--num-requests``), or all when ``n`` is None."""
    if n is None:
        yield from records
        return
    if n < 1:
        raise ConfigError(f"--num-requests must be >= 1, got {n}")
    for i, rec in enumerate(records):
        if i >= n:
            return
        yield rec


def measure_rate(records: Iterable[TraceRecord]) -> tuple[int, float]:
    """(rows, mean rate) of a stream, rate = (n - 1) / (last - first): the inverse mean IAT."""
    n, first, last = 0, 0.0, 0.0
    for rec in records:
        t = rec.arrival or 0.0
        if n == 0:
            first = t
        last = t
        n += 1
    span = last - first
    return n, ((n - 1) / span if n > 1 and span > 0 else math.inf)


def parse_window(spec: str) -> tuple[float, float | None]:
    """``START:END`` seconds (END may be empty) -> (start, end)."""
    a, sep, b = spec.partition(":")
    try:
        start = float(a) if a else 0.0
        end = float(b) if b else None
    except ValueError:
        raise ConfigError(f"bad --time-window {spec!r}; expected START:END in seconds") from None
    if not sep or start < 0 or (end is not None and end <= start):
        raise ConfigError(f"bad --time-window {spec!r}; expected 0 <= START < END seconds")
    return start, end
