"""Exact fast-forward of steady decode (DESIGN §4).

When every running request is decoding, nothing waits, and no event can arrive before step
``k`` ends, the next ``k`` steps are fully determined: same batch, context growing by one token
per request per step. We price them with one vectorised ``decode_run`` call and apply their
effects in the order the step-by-step path would (block allocations by (step, batch position),
then hash commits, then finishes), so results are byte-identical with fast-forward off — a test
asserts it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sluice.core.engine import Engine
from sluice.core.request import Request

MIN_STEPS = 2
MAX_STEPS = 4096  # a longer stretch is simply split into several runs (still exact)
SCALAR_STEPS = 48  # steps priced one by one before pricing in numpy chunks


@dataclass(slots=True)
class DecodeRun:
    reqs: list[Request]
    k: int
    ends: np.ndarray  # end time of each of the k steps
    allocs: list[tuple[int, int]]  # (step 1..k, batch index) of each new block, in order
    eos_at: list[float]
    limits: list[int]  # steps until each request ends (== k: it ends with the run)


@dataclass(slots=True)
class _Scan:
    """One pass over the batch: what planning needs from each request."""

    k: int  # steps before the first request ends (0: not a steady decode batch)
    eos_at: list[float]
    limits: list[int]
    ctx: int  # KV tokens the first step reads
    first_new: list[int]  # per request, the first step whose token needs a new block


def plan_decode_run(engine: Engine, now: float, horizon: float) -> DecodeRun | None:
    """A run of >= 2 decode steps starting at ``now`` that no event before ``horizon`` can
    change, or None when the next step must be planned normally."""
    sched = engine.scheduler
    if sched.waiting or not sched.running or not engine.policy.fast_forward_safe:
        return None
    steps_to_eos = getattr(engine.executor, "steps_to_eos", None)
    perf = getattr(engine.executor, "perf", None)
    if steps_to_eos is None or perf is None or getattr(engine.executor, "noise", None):
        return None
    reqs = sched._running_order(now)
    cfg = sched.cfg
    if len(reqs) > cfg.max_num_batched_tokens:
        return None
    scan = _scan(reqs, steps_to_eos, cfg.max_model_len, engine.kv.block_size)
    if scan.k < MIN_STEPS:
        return None
    ends = _step_ends(perf, len(reqs), scan.ctx, now, min(scan.k, MAX_STEPS), horizon)
    k_cap = len(ends)
    if k_cap < MIN_STEPS:
        return None
    allocs, k_cap = _block_allocations(scan.first_new, engine.kv, k_cap)  # up to the horizon
    if k_cap < MIN_STEPS:
        return None
    return DecodeRun(reqs, k_cap, ends[:k_cap], allocs, scan.eos_at, scan.limits)


def _step_ends(perf, b: int, ctx0: int, now: float, k_cap: int, horizon: float
               ) -> np.ndarray:
    """End times of the run's steps (``b`` decoders reading ``ctx0`` KV tokens in the
    first), up to ``k_cap`` or the first step an event at ``horizon`` changes (an event at
    time <= ends[j] changes step j+1, so j is the last).
    Priced in growing chunks: most runs are cut by an arrival long before a finish, and
    each step's time and each end (a running sum from ``now``) is the same whether it is
    computed alone or in a chunk."""
    parts: list[np.ndarray] = []
    done, start, chunk = 0, now, 32
    line = getattr(perf, "decode_line", None)
    if line is not None:  # the first steps one by one in Python floats: most runs stop there
        base, fixed, slope = line(b)
        first: list[float] = []
        end, ctx = now, ctx0
        for _ in range(min(k_cap, SCALAR_STEPS)):
            end = end + ((slope * ctx + fixed) + base)  # step_time's operations, in order
            first.append(end)
            if end >= horizon:
                return np.array(first)
            ctx += b
        parts.append(np.array(first))
        done, start, chunk = len(first), end, 256
    while done < k_cap:
        n = min(chunk, k_cap - done)
        buf = np.empty(n + 1)
        buf[0] = start
        buf[1:] = perf.decode_run(b, ctx0 + done * b, n)
        ends = buf.cumsum(out=buf)[1:]  # end_j = end_{j-1} + d_j, as step by step
        if ends[-1] >= horizon:
            parts.append(ends[: int(ends.searchsorted(horizon, side="left")) + 1])
            break
        parts.append(ends)
        done += n
        start = float(ends[-1])
        chunk *= 8
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _scan(reqs: list[Request], steps_to_eos, max_len: int, bs: int) -> _Scan:
    """Steps before the first request ends (EOS, max_tokens or the context limit), and per
    request its steps to EOS and to its end and its first step needing a new block; k = 0
    if a request is not a steady decoder (e.g. a prompt's last token is still to compute).
    Plain comparisons in one loop: this runs for every run."""
    k = 1 << 30
    ctx = 0
    eos_at: list[float] = []
    limits: list[int] = []
    first_new: list[int] = []
    for r in reqs:
        tokens = r.num_tokens
        c = r.num_computed
        if tokens - c != 1 or r.first_token < 0 or r.resume_tokens:
            return _Scan(0, eos_at, limits, 0, first_new)
        eos = steps_to_eos(r)
        eos_at.append(eos)
        limit = r.max_tokens - r.num_output
        if eos < limit:
            limit = eos
        if max_len - tokens < limit:
            limit = max_len - tokens
        limits.append(limit)
        if limit < k:
            k = limit
        ctx += c
        first_new.append(len(r.blocks) * bs + 1 - c)
    return _Scan(int(k), eos_at, limits, ctx + len(reqs), first_new)


def _block_allocations(first_new: list[int], kv, k_cap: int
                       ) -> tuple[list[tuple[int, int]], int]:
    """New blocks the run needs, in step-by-step order (step, then batch position); shortens
    the run to what fits."""
    bs = kv.block_size
    events: list[tuple[int, int]] = []
    for i, j in enumerate(first_new):
        while j <= k_cap:
            events.append((j, i))
            j += bs
    events.sort()
    free = kv.num_free
    if len(events) > free:
        k_cap = min(k_cap, events[free][0] - 1)  # the step that would have to preempt
        events = [e for e in events[:free] if e[0] <= k_cap]  # none of that step's
    return events, k_cap


def apply_decode_run(engine: Engine, run: DecodeRun) -> list[Request]:
    """Apply the run's effects at its end; returns requests that ended (in batch order)."""
    sched = engine.scheduler
    kv = engine.kv
    k = run.k
    reqs = run.reqs
    if run.allocs:  # taken in one go, handed out in step-by-step order: the same blocks
        if len(run.allocs) > kv.num_free:  # pragma: no cover - guarded by planning
            raise AssertionError("fast-forward allocation failed")
        for (_j, i), block in zip(run.allocs, kv.take(len(run.allocs))):
            reqs[i].blocks.append(block)
    ends = run.ends
    first_end = float(ends[0])
    end = float(ends[-1])
    itls = sched.itls
    append_itl = itls.append
    for r in reqs:
        r.num_computed += k
        content = r.content
        segs = content.segments
        if segs is not None and segs[-1][0] == -1 - r.id:  # output_key, inlined
            segs[-1][1] += k  # inline append_virtual: the hot path
            content.length += k
        else:
            content.append_virtual(r.output_key, k)
            if segs is None:
                kv.commit(r)  # token content only: virtual output blocks register at kv.free
        r.num_tokens += k
        r.num_output += k
        append_itl(first_end - r.last_token)
        r.last_token = end
    # EOS, max_tokens or the context limit: planned to end with the run
    ended = [i for i, limit in enumerate(run.limits) if limit == k]
    if k > 1:
        sched.itl_runs.append((ends, len(reqs)))  # gaps: differences, taken at the end
    engine.steps += k
    for i in ended:
        sched._finish(reqs[i], end, "stop" if run.eos_at[i] == k else "length")
    if sched._on_decode_run:
        engine.policy.on_decode_run(reqs, k, sched.view(end))
    return [reqs[i] for i in ended]
