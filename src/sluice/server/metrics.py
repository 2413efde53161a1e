"""Prometheus text exposition (format 0.0.4) for ``GET /metrics``, written by hand.

Why not ``prometheus_client``: the server needs a dozen series, and the exposition format is a
few lines of text; one less dependency, and the engine thread records into plain counters under
one lock (no global registry shared between test servers in one process). Names follow vLLM's
where an equivalent exists (``time_to_first_token_seconds`` ...) with a ``sluice_`` prefix.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import defaultdict
from dataclasses import dataclass, field

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                   2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1,
               0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, v: float) -> None:
        if math.isnan(v):
            return
        i = bisect.bisect_left(self.buckets, v)
        if i < len(self.counts):
            self.counts[i] += 1
        self.total += v
        self.n += 1

    def lines(self, name: str) -> list[str]:
        out, cum = [], 0
        for b, c in zip(self.buckets, self.counts):
            cum += c
            out.append(f'{name}_bucket{{le="{_num(b)}"}} {cum}')
        out.append(f'{name}_bucket{{le="+Inf"}} {self.n}')
        out.append(f"{name}_sum {_num(self.total)}")
        out.append(f"{name}_count {self.n}")
        return out


@dataclass(slots=True)
class EngineSnapshot:
    """Gauges the engine thread publishes after every step (read without touching the engine)."""

    waiting: int = 0
    running: int = 0
    swapped: int = 0
    kv_used: int = 0
    kv_total: int = 1
    kv_cached: int = 0
    preemptions: int = 0
    steps: int = 0
    pending: int = 0  # accepted by HTTP, not yet handed to the scheduler


class ServerMetrics:
    """Everything ``/metrics`` shows; ``observe_*`` are called from the engine thread."""

    def __init__(self, model: str, policy: str = "") -> None:
        self.model = model
        self.policy = policy
        self._lock = threading.Lock()
        self.ttft = Histogram(LATENCY_BUCKETS)
        self.itl = Histogram(ITL_BUCKETS)
        self.e2e = Histogram(LATENCY_BUCKETS)
        self.step = Histogram(ITL_BUCKETS)
        self.finished: dict[str, int] = defaultdict(int)
        self.rejected: dict[str, int] = defaultdict(int)
        self.prompt_tokens: dict[str, int] = defaultdict(int)
        self.output_tokens: dict[str, int] = defaultdict(int)

    def observe_first_token(self, ttft: float) -> None:
        with self._lock:
            self.ttft.observe(ttft)

    def observe_itl(self, gap: float) -> None:
        with self._lock:
            self.itl.observe(gap)

    def observe_step(self, seconds: float) -> None:
        with self._lock:
            self.step.observe(seconds)

    def observe_end(self, tenant: str, reason: str, e2e: float, prompt: int, output: int) -> None:
        with self._lock:
            self.finished[reason] += 1
            self.e2e.observe(e2e)
            self.prompt_tokens[tenant] += prompt
            self.output_tokens[tenant] += output

    def count_rejected(self, reason: str) -> None:
        with self._lock:
            self.rejected[reason] += 1

    def render(self, snap: EngineSnapshot) -> str:
        """The exposition text; one consistent read of the counters under the lock."""
        with self._lock:
            lines: list[str] = ["# HELP sluice_info What is served: model and policy",
                                "# TYPE sluice_info gauge",
                                f'sluice_info{{model="{_escape(self.model)}",'
                                f'policy="{_escape(self.policy)}"}} 1']
            _gauge(lines, "sluice_requests_waiting", "Requests queued (incl. preempted)",
                   snap.waiting + snap.pending)
            _gauge(lines, "sluice_requests_running", "Requests in the running batch", snap.running)
            _gauge(lines, "sluice_requests_swapped", "Requests with KV on the host tier",
                   snap.swapped)
            _gauge(lines, "sluice_kv_blocks_used", "KV blocks owned by requests or pins",
                   snap.kv_used)
            _gauge(lines, "sluice_kv_blocks_cached", "Free KV blocks holding reusable prefixes",
                   snap.kv_cached)
            _gauge(lines, "sluice_kv_blocks_total", "KV blocks on the device", snap.kv_total)
            _gauge(lines, "sluice_kv_usage_ratio", "Share of KV blocks in use",
                   snap.kv_used / snap.kv_total if snap.kv_total else 0.0)
            _counter(lines, "sluice_preemptions_total", "Preemptions executed", snap.preemptions)
            _counter(lines, "sluice_steps_total", "Engine steps executed", snap.steps)
            _labelled(lines, "sluice_requests_finished_total", "counter",
                      "Requests ended, by finish reason", "reason", self.finished)
            _labelled(lines, "sluice_requests_rejected_total", "counter",
                      "Requests refused at the door, by reason", "reason", self.rejected)
            _labelled(lines, "sluice_tenant_prompt_tokens_total", "counter",
                      "Prompt tokens of ended requests, per tenant", "tenant",
                      self.prompt_tokens)
            _labelled(lines, "sluice_tenant_generation_tokens_total", "counter",
                      "Generated tokens of ended requests, per tenant", "tenant",
                      self.output_tokens)
            service = {t: self.prompt_tokens[t] + 2 * self.output_tokens.get(t, 0)
                       for t in self.prompt_tokens}
            _labelled(lines, "sluice_tenant_service_total", "counter",
                      "Per-tenant service, VTC measure: prompt + 2 x generated tokens",
                      "tenant", service)
            for name, hist, help_ in (
                    ("sluice_time_to_first_token_seconds", self.ttft, "Time to first token"),
                    ("sluice_inter_token_latency_seconds", self.itl, "Inter-token latency"),
                    ("sluice_e2e_request_latency_seconds", self.e2e, "End-to-end latency"),
                    ("sluice_step_duration_seconds", self.step, "Executor time per step")):
                lines += [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
                lines += hist.lines(name)
        return "\n".join(lines) + "\n"


def _num(v: float) -> str:
    if isinstance(v, int):
        return str(v)
    return repr(float(v))


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _gauge(lines: list[str], name: str, help_: str, value: float) -> None:
    lines += [f"# HELP {name} {help_}", f"# TYPE {name} gauge", f"{name} {_num(value)}"]


def _counter(lines: list[str], name: str, help_: str, value: float) -> None:
    lines += [f"# HELP {name} {help_}", f"# TYPE {name} counter", f"{name} {_num(value)}"]


def _labelled(lines: list[str], name: str, kind: str, help_: str, label: str,
              values: dict[str, float]) -> None:
    lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
    for key in sorted(values):
        lines.append(f'{name}{{{label}="{_escape(key)}"}} {_num(values[key])}')
