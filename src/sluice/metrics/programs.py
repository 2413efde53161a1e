"""Program-level metrics for agent workloads: what a user of an agent waits for.

Why separate from per-request metrics: an agent's user sees the *program* - tens of calls with
tool time in between - so the headline is program JCT (first arrival to the last token of the
last turn), and the cost agent-aware retention fights is the *re-prefill*: context a returning
turn had already computed once and must compute again because its KV was thrown away.

Definitions (all from per-request records, so any policy is measured the same way):

* ``program JCT`` = last turn's finish - first turn's arrival, for programs whose every turn
  finished; ``programs_per_minute`` = completed programs / (first arrival to last finish).
* ``turn queueing delay`` = first scheduled - arrival, per turn of a program.
* ``reprefilled_tokens`` = for each turn k > 0, the previous turn's reusable context (its full
  KV blocks: prompt + output - 1 tokens, rounded down to a block) not served from cache, plus
  every token recomputed after a preemption. ``context_hit_rate`` = the share of that reusable
  context that was served from cache.
* pins: the mechanism's counters (``KVStats``) and, from a sampler, blocks held by pins over
  time; ``pin_return_rate`` (from the policy's ledger) = share of pinned turns whose next turn
  arrived before the pin expired.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable

import numpy as np

from sluice.metrics.records import RequestRecord
from sluice.metrics.summary import jain_index


def _stats(prefix: str, values: list[float], out: dict[str, Any]) -> None:
    v = np.sort(np.asarray(values, dtype=np.float64))
    for stat in ("mean", "p50", "p90", "p99"):
        key = f"{stat}_{prefix}"
        if v.size == 0:
            out[key] = None
        elif stat == "mean":
            out[key] = float(np.sum(v) / v.size)
        else:
            out[key] = float(np.percentile(v, int(stat[1:])))


def group_programs(records: Iterable[RequestRecord]) -> dict[int, list[RequestRecord]]:
    """program id -> its turns in turn order (records outside programs are skipped)."""
    progs: dict[int, list[RequestRecord]] = defaultdict(list)
    for r in records:
        if r.program >= 0:
            progs[r.program].append(r)
    for turns in progs.values():
        turns.sort(key=lambda r: r.turn)
    return dict(sorted(progs.items()))


def reusable_tokens(prev: RequestRecord, block_size: int) -> int:
    """Tokens of ``prev``'s context whose KV a next turn could reuse (its full blocks)."""
    ctx = prev.prompt_tokens + prev.output_tokens - 1
    return max(0, ctx) // block_size * block_size


def program_summary(records: list[RequestRecord], kv_stats: Any = None, *,
                    block_size: int = 16, pin_samples: list[tuple[float, int]] | None = None,
                    total_blocks: int | None = None, retention: Any = None) -> dict[str, Any]:
    """Program metrics (keys above); ``kv_stats`` a ``KVStats``, ``pin_samples`` (time,
    pinned blocks), ``retention`` a policy's ``RetentionStats`` - each optional."""
    progs = group_programs(records)
    out: dict[str, Any] = {"programs": len(progs)}
    jct: list[float] = []
    ends: list[float] = []
    by_tenant: dict[str, list[float]] = defaultdict(list)
    for turns in progs.values():
        if all(t.completed for t in turns) and turns[-1].last_turn:
            jct.append(turns[-1].finish - turns[0].arrival)
            ends.append(turns[-1].finish)
            by_tenant[turns[0].user].append(jct[-1])
    out["programs_completed"] = len(jct)
    out["programs_failed"] = sum(1 for t in progs.values() if any(
        r.state in ("aborted", "rejected") for r in t))
    _stats("program_jct_s", jct, out)
    start = min((t[0].arrival for t in progs.values()), default=0.0)
    span = (max(ends) - start) if ends else 0.0
    out["programs_per_minute"] = len(jct) / span * 60.0 if span > 0 else 0.0
    turns_all = [r for t in progs.values() for r in t if r.completed]
    _stats("turn_queue_s", [r.first_scheduled - r.arrival for r in turns_all], out)
    out.update(_reprefill(progs, block_size))
    out["tenant_mean_program_jct_s"] = {u: float(np.mean(v)) for u, v in sorted(by_tenant.items())}
    out["jain_tenant_programs"] = (jain_index([float(len(v)) for v in by_tenant.values()])
                                   if len(by_tenant) > 1 else None)
    out.update(_pins(kv_stats, pin_samples, total_blocks, retention))
    return out


def _reprefill(progs: dict[int, list[RequestRecord]], bs: int) -> dict[str, Any]:
    reusable = hit = miss = 0
    recomputed = 0
    for turns in progs.values():
        for prev, cur in zip(turns, turns[1:]):
            if cur.first_scheduled < 0 or cur.turn != prev.turn + 1:
                continue
            can = reusable_tokens(prev, bs)
            got = min(cur.cached_tokens, can)
            reusable += can
            hit += got
            miss += can - got
        recomputed += sum(r.recomputed_tokens for r in turns)
    return {"reusable_context_tokens": reusable, "context_hit_rate":
            hit / reusable if reusable else None, "reprefilled_context_tokens": miss,
            "preemption_recomputed_tokens": recomputed,
            "reprefilled_tokens": miss + recomputed}


def _pins(kv_stats: Any, samples: list[tuple[float, int]] | None, total: int | None,
          retention: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if kv_stats is not None:
        for name in ("pins_created", "pins_expired", "pins_reclaimed",
                     "pinned_blocks_reclaimed", "pins_released"):
            out[name] = getattr(kv_stats, name)
    if samples:
        t = np.array([s[0] for s in samples], dtype=np.float64)
        b = np.array([s[1] for s in samples], dtype=np.float64)
        # time-weighted: each sample holds until the next one
        w = np.diff(t, append=t[-1])
        mean = float(np.sum(b * w) / np.sum(w)) if np.sum(w) > 0 else float(np.mean(b))
        out["mean_pinned_blocks"] = mean
        out["peak_pinned_blocks"] = int(b.max())
        if total:
            out["mean_pinned_fraction"] = mean / total
    if retention is not None:
        d = retention.as_dict() if hasattr(retention, "as_dict") else dict(retention)
        out["pin_return_rate"] = d.get("pin_return_rate")
        out["pins_requested"] = d.get("pins")
        out["pin_seconds_asked"] = d.get("pin_seconds_asked")
    return out
