"""Summary metrics with `vllm bench serve` names and definitions, plus sluice's additions.

vLLM's definitions (vllm/benchmarks/serve.py): TTFT = first token - send time; TPOT per request =
(E2EL - TTFT) / (output_tokens - 1), requests with one token excluded; ITL = every gap between
consecutive tokens of a request; E2EL = last token - send time; throughputs over the benchmark
duration (first arrival to last completion); goodput = requests meeting *every* given SLO
(``--goodput ttft:MS tpot:MS e2el:MS``) per second. All latencies in ms.

Determinism: every statistic is computed on a sample's canonical form (distinct sorted values
with counts, ``metrics/sample.py``), so the order in which values were recorded (step by step
or fast-forwarded) cannot change a bit of the result.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable

import numpy as np

from sluice.errors import ConfigError
from sluice.metrics.records import RequestRecord
from sluice.metrics.sample import WeightedSample

PERCENTILES = (50, 90, 99)
GOODPUT_KEYS = ("ttft", "tpot", "e2el")


def parse_goodput(items: Iterable[str] | None) -> dict[str, float]:
    """``["ttft:200", "tpot:50"]`` -> {"ttft": 0.2, "tpot": 0.05} (seconds)."""
    out: dict[str, float] = {}
    for item in items or []:
        for part in item.replace(",", " ").split():
            name, sep, value = part.partition(":")
            if not sep or name not in GOODPUT_KEYS:
                raise ConfigError(f"--goodput {part!r}: expected NAME:MS with NAME in "
                                  f"{', '.join(GOODPUT_KEYS)}")
            try:
                ms = float(value)
            except ValueError:
                raise ConfigError(f"--goodput {part!r}: {value!r} is not a number") from None
            if not ms > 0:
                raise ConfigError(f"--goodput {part!r}: the bound must be > 0 ms")
            out[name] = ms / 1000.0
    return out


def _dist(prefix: str, values_s: np.ndarray | WeightedSample, out: dict) -> None:
    """mean/median/std/p90/p99 in ms of a sample given in seconds."""
    if not isinstance(values_s, WeightedSample):
        values_s = WeightedSample.of(values_s)
    if values_s.size == 0:
        for stat in ("mean", "median", "std", "p90", "p99"):
            out[f"{stat}_{prefix}_ms"] = None
        return
    v = WeightedSample(values_s.values * 1000.0, values_s.counts)
    out[f"mean_{prefix}_ms"] = v.mean()
    out[f"median_{prefix}_ms"] = v.percentile(50)
    out[f"std_{prefix}_ms"] = v.std()
    out[f"p90_{prefix}_ms"] = v.percentile(90)
    out[f"p99_{prefix}_ms"] = v.percentile(99)


def jain_index(values: list[float]) -> float | None:
    """Jain's fairness index (sum x)^2 / (n sum x^2): 1 = equal, 1/n = one takes all."""
    if not values:
        return None
    sq = sum(x * x for x in values)
    return (sum(values) ** 2) / (len(values) * sq) if sq > 0 else 1.0


def meets_slo(rec: RequestRecord, bounds: dict[str, float]) -> bool:
    ok = True
    if "ttft" in bounds:
        ok = ok and rec.ttft <= bounds["ttft"]
    if "tpot" in bounds and not math.isnan(rec.tpot):
        ok = ok and rec.tpot <= bounds["tpot"]
    if "e2el" in bounds:
        ok = ok and rec.e2el <= bounds["e2el"]
    return ok


def _own_slo(rec: RequestRecord) -> dict[str, float]:
    b = {}
    if not math.isnan(rec.slo_ttft):
        b["ttft"] = rec.slo_ttft
    if not math.isnan(rec.slo_tpot):
        b["tpot"] = rec.slo_tpot
    if not math.isnan(rec.slo_deadline):
        b["e2el"] = rec.slo_deadline
    return b


def summarize(records: list[RequestRecord], itls: np.ndarray | WeightedSample,
              goodput: dict[str, float] | None = None) -> dict:
    """The summary dict; keys documented in docs/cli.md."""
    done = [r for r in records if r.completed]
    out: dict = {"num_requests": len(records), "completed": len(done)}
    states: dict[str, int] = defaultdict(int)
    reasons: dict[str, int] = defaultdict(int)
    for r in records:
        states[r.state] += 1
        if r.state == "rejected":
            reasons[r.stop_reason] += 1
    out["rejected"] = states.get("rejected", 0)
    out["rejected_by_reason"] = dict(sorted(reasons.items()))
    out["aborted"] = states.get("aborted", 0)
    if records:
        start = min(r.arrival for r in records)
        end = max((r.finish for r in done), default=start)
    else:
        start = end = 0.0
    duration = end - start
    out["duration"] = duration
    out["total_input_tokens"] = sum(r.prompt_tokens for r in done)
    out["total_output_tokens"] = sum(r.output_tokens for r in done)
    per_s = (lambda x: x / duration) if duration > 0 else (lambda x: 0.0)
    out["request_throughput"] = per_s(len(done))
    out["output_throughput"] = per_s(out["total_output_tokens"])
    out["total_token_throughput"] = per_s(out["total_input_tokens"] + out["total_output_tokens"])
    if goodput:
        good = sum(1 for r in done if meets_slo(r, goodput))
        out["request_goodput"] = per_s(good)
        out["goodput_fraction"] = good / len(records) if records else None
    _dist("ttft", np.array([r.ttft for r in done], dtype=float), out)
    _dist("tpot", np.array([r.tpot for r in done], dtype=float), out)
    _dist("itl", itls, out)
    _dist("e2el", np.array([r.e2el for r in done], dtype=float), out)
    _dist("queue", np.array([r.first_scheduled - r.arrival for r in done], dtype=float), out)
    out.update(_service_and_fairness(done))
    out["per_tenant"] = _latency_by(done, lambda r: r.user)
    out["per_class"] = _latency_by(done, lambda r: r.slo_class or "default")
    out.update(_slo_attainment(records))
    prompt = sum(r.prompt_tokens for r in done)
    out["prefix_hit_rate"] = (sum(r.cached_tokens for r in done) / prompt) if prompt else 0.0
    out["preemptions"] = sum(r.preemptions for r in records)
    out["recomputed_tokens"] = sum(r.recomputed_tokens for r in records)
    return out


def _service_and_fairness(done: list[RequestRecord]) -> dict:
    """Per-tenant service (VTC's measure: input + 2 x output tokens) normalised by weight."""
    service: dict[str, float] = defaultdict(float)
    weight: dict[str, float] = {}
    for r in done:
        service[r.user] += r.prompt_tokens + 2 * r.output_tokens
        weight[r.user] = r.weight
    users = sorted(service)
    norm = [service[u] / weight[u] for u in users]
    return {
        "num_tenants": len(users),
        "jain_fairness": jain_index(norm) if len(users) > 1 else None,
        "service_per_tenant": {u: service[u] for u in users},
    }


def _latency_by(done: list[RequestRecord], group) -> dict:
    """TTFT/TPOT/E2EL distributions per group (tenant or SLO class): fairness and SLO
    policies are judged on a group's tail, not the mix's."""
    groups: dict[str, list[RequestRecord]] = defaultdict(list)
    for r in done:
        groups[group(r)].append(r)
    out = {}
    for name in sorted(groups):
        rs = groups[name]
        d: dict = {"completed": len(rs)}
        _dist("ttft", np.array([r.ttft for r in rs], dtype=float), d)
        _dist("tpot", np.array([r.tpot for r in rs], dtype=float), d)
        _dist("e2el", np.array([r.e2el for r in rs], dtype=float), d)
        out[name] = {k: v for k, v in d.items() if not k.startswith("std_")}
    return out


def _slo_attainment(records: list[RequestRecord]) -> dict:
    """Share of requests meeting their own SLO, per SLO class (rejected ones count as misses)."""
    total: dict[str, int] = defaultdict(int)
    met: dict[str, int] = defaultdict(int)
    for r in records:
        bounds = _own_slo(r)
        if not bounds:
            continue
        cls = r.slo_class or "default"
        total[cls] += 1
        if r.completed and meets_slo(r, bounds):
            met[cls] += 1
    if not total:
        return {"slo_attainment": None, "slo_attainment_by_class": {}}
    return {
        "slo_attainment": sum(met.values()) / sum(total.values()),
        "slo_attainment_by_class": {c: met[c] / total[c] for c in sorted(total)},
    }
