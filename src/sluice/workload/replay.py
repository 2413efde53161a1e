"""Open-loop workloads: replay a trace through its transforms, or generate synthetic traffic.

Why requests are rebuilt on every ``requests()`` call: the simulator mutates requests, and
``sluice compare`` replays the same workload once per policy; a fresh, deterministic stream per
call (RNGs re-seeded from the workload's seed) gives byte-identical inputs to each run while
the trace itself stays on disk.

Replay semantics follow ``vllm bench serve``: ``max_tokens`` is the trace's output length
(ignore_eos), unless a cap N is given: then ``max_tokens = N`` and the oracle's
``true_output = min(output, N)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np

from sluice.core.content import Content
from sluice.core.request import Request
from sluice.workload.keys import hash_key, unique_key
from sluice.workload.lengths import PairSampler
from sluice.workload.synth import ArrivalProcess
from sluice.workload.tenancy import Decorator
from sluice.workload.trace_readers import TraceRecord
from sluice.workload.traces import Trace
from sluice.workload import transforms as tf


def record_content(rec: TraceRecord, request_id: int) -> Content:
    """Virtual prompt of a record: its prefix blocks when the trace has them, else private.

    Mooncake block ``h`` becomes segment ``(h+1, 512)``; the last block is partial. Missing
    blocks (fewer ids than the length needs) are completed with a private segment.
    """
    if not rec.hash_ids:
        return Content(segments=[(unique_key(request_id), rec.input_len)], private=True)
    bs = rec.block_size
    n = min(len(rec.hash_ids), -(-rec.input_len // bs))
    segs = [(hash_key(h), bs) for h in rec.hash_ids[:n]]
    covered = n * bs
    if covered >= rec.input_len:
        segs[-1] = (segs[-1][0], rec.input_len - (n - 1) * bs)
    else:
        segs.append((unique_key(request_id), rec.input_len - covered))
    return Content(segments=segs)


def make_request(rec: TraceRecord, request_id: int, cap: int | None) -> Request:
    out = rec.output_len
    max_tokens = out if cap is None else cap
    return Request(request_id, float(rec.arrival or 0.0), record_content(rec, request_id),
                   max_tokens, true_output=out if cap is None else min(out, cap))


@dataclass(slots=True)
class ReplayOptions:
    """The transform pipeline, in the order it runs."""

    arrivals: ArrivalProcess | None = None  # replaces/supplies arrival times
    window: tuple[float, float | None] | None = None
    sample: float | None = None
    rate_scale: float | None = None
    target_rate: float | None = None  # req/s; rescales time after measuring the stream
    max_context: int | None = None
    num_requests: int | None = None
    max_tokens: int | None = None


class TraceWorkload:
    """A trace replayed open loop (the ``Workload`` protocol)."""

    def __init__(self, trace: Trace, opts: ReplayOptions | None = None, seed: int = 0,
                 decorator: Decorator | None = None, name: str | None = None) -> None:
        self.trace = trace
        self.opts = opts or ReplayOptions()
        self.seed = seed
        self.decorator = decorator or Decorator()
        self.name = name or trace.name
        self.report = tf.FilterReport()
        self.scale_factor = 1.0

    def _records(self, report: tf.FilterReport) -> Iterator[TraceRecord]:
        """Everything but time scaling: the stream whose rate ``--rate`` measures."""
        o = self.opts
        rng = np.random.default_rng([self.seed, 1])
        recs: Iterable[TraceRecord] = self.trace.records()
        if o.arrivals is not None or not self.trace.has_arrivals:
            from sluice.workload.synth import Burst
            recs = tf.assign_arrivals(recs, o.arrivals or Burst(), np.random.default_rng(
                [self.seed, 2]))
        if o.window is not None:
            recs = tf.time_window(recs, *o.window)
        if o.sample is not None:
            recs = tf.subsample(recs, o.sample, rng, report)
        if o.max_context is not None:
            recs = tf.max_context(recs, o.max_context, report)
        return tf.head(recs, o.num_requests)

    def _factor(self) -> float:
        o = self.opts
        factor = o.rate_scale or 1.0
        if o.target_rate is not None:
            _, rate = tf.measure_rate(self._records(tf.FilterReport()))
            factor = o.target_rate / rate if math.isfinite(rate) else 1.0
        return factor

    def requests(self) -> Iterator[Request]:
        self.report = tf.FilterReport()
        self.scale_factor = self._factor()
        recs: Iterable[TraceRecord] = self._records(self.report)
        if self.scale_factor != 1.0:
            recs = tf.scale_time(recs, self.scale_factor)
        rng = np.random.default_rng([self.seed, 3])
        dec = self.decorator if self.decorator.active else None
        for i, rec in enumerate(recs):
            req = make_request(rec, i, self.opts.max_tokens)
            if dec is not None:
                dec.apply(req, i, rec, rng)
            yield req

    def on_request_end(self, req: Request, now: float) -> list[Request]:
        return []


@dataclass(slots=True)
class SynthWorkload:
    """Synthetic open-loop traffic: an arrival process and an (input, output) length sampler.

    Stops after ``num_requests`` or at ``duration`` seconds, whichever comes first (one of
    them is required unless the process is finite).
    """

    arrivals: ArrivalProcess
    lengths: PairSampler
    num_requests: int | None = None
    duration: float | None = None
    seed: int = 0
    max_tokens: int | None = None
    decorator: Decorator = field(default_factory=Decorator)
    name: str = "synthetic"

    def requests(self) -> Iterator[Request]:
        times = self.arrivals.times(np.random.default_rng([self.seed, 2]))
        rng_len = np.random.default_rng([self.seed, 4])
        rng_dec = np.random.default_rng([self.seed, 3])
        limit = self.num_requests if self.num_requests is not None else math.inf
        i = 0
        while i < limit:
            ins, outs = self.lengths.sample(rng_len, 1024)
            for n_in, n_out in zip(ins.tolist(), outs.tolist()):
                t = next(times, None)
                if t is None or i >= limit or (self.duration is not None and t >= self.duration):
                    return
                rec = TraceRecord(t, n_in, n_out)
                req = make_request(rec, i, self.max_tokens)
                if self.decorator.active:
                    self.decorator.apply(req, i, None, rng_dec)
                yield req
                i += 1

    def on_request_end(self, req: Request, now: float) -> list[Request]:
        return []
