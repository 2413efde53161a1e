"""Shared pieces of the agent-aware policies: program clocks, tool-duration history, pin ledger.

Why a common base: every agent policy (Continuum, ThunderAgent, KVFlow, SAGA, program FCFS)
needs the same three facts that a single call does not carry - when its *program* first
arrived, how long the tool it is about to call usually takes, and whether a retained turn
came back before its pin ran out. Keeping them here keeps each paper's file about its one idea.

The policies cannot see the KV cache itself (DESIGN §1: a policy only decides), so the ledger
records what the policy *asked* for; the mechanism's own counters (``KVStats``) say what
happened to the pins (expired, reclaimed under pressure, released at program end).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np

from sluice.core.request import Request
from sluice.errors import ConfigError
from sluice.policies.base import View
from sluice.policies.compose import Tunable


@dataclass(slots=True)
class RetentionStats:
    """What a retaining policy asked for and how its bets turned out (monotone counters)."""

    pins: int = 0  # finished turns the policy asked to pin
    pinned_tokens: int = 0  # their context tokens
    declined: int = 0  # non-last turns it chose not to pin
    returns_in_ttl: int = 0  # next turn arrived before the pin's expiry
    returns_late: int = 0  # next turn arrived after it
    pin_seconds_asked: float = 0.0  # sum of TTLs granted

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        done = self.returns_in_ttl + self.returns_late
        d["pin_return_rate"] = self.returns_in_ttl / done if done else None
        return d


class ToolHistory:
    """Per-tool durations with an exponential prior, so the first calls of a tool are not
    judged on no data (Continuum's cold start).

    The belief about tool ``x`` is a mixture: ``prior_weight`` pseudo-observations from an
    exponential whose mean is the pooled mean of *all* tools seen so far (``prior_mean`` before
    any), plus the empirical distribution of the last ``window`` observations of ``x``.
    """

    def __init__(self, prior_mean: float = 5.0, prior_weight: float = 2.0,
                 window: int = 256) -> None:
        if not prior_mean > 0 or prior_weight < 0 or window < 1:
            raise ConfigError(f"tool history: prior_mean must be > 0, prior_weight >= 0, "
                              f"window >= 1 (got {prior_mean}, {prior_weight}, {window})")
        self.prior_mean = float(prior_mean)
        self.prior_weight = float(prior_weight)
        self.window = window
        self._obs: dict[str, deque[float]] = {}
        self._pooled_sum = 0.0
        self._pooled_n = 0

    def observe(self, tool: str | None, seconds: float) -> None:
        q = self._obs.setdefault(tool or "", deque(maxlen=self.window))
        q.append(max(0.0, float(seconds)))
        self._pooled_sum += max(0.0, float(seconds))
        self._pooled_n += 1

    def samples(self, tool: str | None) -> np.ndarray:
        q = self._obs.get(tool or "")
        return np.sort(np.fromiter(q, dtype=np.float64)) if q else np.zeros(0)

    def prior_mu(self) -> float:
        return self._pooled_sum / self._pooled_n if self._pooled_n else self.prior_mean

    def cdf(self, tool: str | None, taus: np.ndarray) -> np.ndarray:
        """P(tool returns within tau) for each tau."""
        s, mu, w = self.samples(tool), self.prior_mu(), self.prior_weight
        taus = np.asarray(taus, dtype=np.float64)
        emp = np.searchsorted(s, taus, side="right").astype(np.float64)
        return (w * -np.expm1(-taus / mu) + emp) / (w + s.size) if w + s.size else emp

    def expected_min(self, tool: str | None, taus: np.ndarray) -> np.ndarray:
        """E[min(T, tau)]: expected seconds a pin of TTL tau is actually held."""
        s, mu, w = self.samples(tool), self.prior_mu(), self.prior_weight
        taus = np.asarray(taus, dtype=np.float64)
        prior = mu * -np.expm1(-taus / mu)
        emp = np.minimum(s[None, :], taus[:, None]).sum(axis=1) if s.size else 0.0 * taus
        return (w * prior + emp) / (w + s.size) if w + s.size else emp

    def expected_residual(self, tool: str | None, elapsed: float) -> float:
        """E[T - elapsed | T > elapsed]: seconds still to wait for a call ``elapsed`` seconds
        old. Why not the mean: tool times are heavy-tailed, so a call that is already late
        is likely a long one (the exponential prior alone is memoryless: its residual is its
        mean). Infinite when nothing in the belief lasts that long: no estimate, so the
        call ranks as the latest of all."""
        s, mu, w = self.samples(tool), self.prior_mu(), self.prior_weight
        tail = s[np.searchsorted(s, elapsed, side="right"):]
        survive = w * math.exp(-elapsed / mu)
        mass = survive + tail.size
        return (survive * mu + float((tail - elapsed).sum())) / mass if mass > 0 else math.inf

    def mean(self, tool: str | None) -> float:
        s, w = self.samples(tool), self.prior_weight
        return (w * self.prior_mu() + float(s.sum())) / (w + s.size) if w + s.size else 0.0

    def quantile(self, tool: str | None, q: float) -> float:
        """Smallest tau with cdf(tau) >= q (bisection on the mixture; monotone, exact enough)."""
        lo, hi = 0.0, max(self.prior_mu() * 50.0, float(self.samples(tool).max(initial=0.0)))
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if self.cdf(tool, np.array([mid]))[0] >= q:
                hi = mid
            else:
                lo = mid
        return hi


class ProgramPolicy(Tunable):
    """Base for agent policies: tracks each program's first arrival and tool durations.

    Order: *program-level FCFS* - a returning turn is ordered by its program's first arrival,
    so a half-finished program does not queue behind programs that started after it
    (Continuum, Li et al. 2025; SAGA's workflow-atomic scheduling). Requests outside programs
    keep their own arrival time, so mixed traffic is ordered by start time - which, past
    saturation, ranks every turn of a long program ahead of later plain requests (measured in
    docs/results.md; compose with a fair-share policy to bound it).
    The default preemption victim is the running request with the *highest* key (the youngest
    program), not the most recently admitted one, for the same reason.
    """

    static_key = True
    defaults: ClassVar[dict[str, Any]] = {"prior_mean": 5.0, "prior_weight": 2.0}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)  # Tunable: rejects undeclared options, fills self.opts
        self.first: dict[int, float] = {}
        self.history = ToolHistory(float(self.opts["prior_mean"]),
                                   float(self.opts["prior_weight"]))
        self.retention = RetentionStats()
        self._pin_expiry: dict[int, float] = {}
        self._expiries: list[float] = []  # heap of every pin expiry asked for (wake-ups)

    def key(self, req: Request, now: float) -> tuple:
        if req.program is None:
            return (req.arrival, req.id)
        return (self.first.get(req.program, req.arrival), req.id)

    def victim(self, running: list[Request], view: View) -> Request:
        now = view.now
        return max(running, key=lambda r: self.key(r, now))

    def on_arrival(self, req: Request, view: View) -> None:
        if req.program is None:
            return
        st = view.programs.get(req.program)
        first = st.first_arrival if st is not None else req.arrival
        if req.program not in self.first:
            if len(self.first) > 2 * len(view.programs) + 64:
                self._prune(view)
            self.first[req.program] = first
        if req.turn > 0 and st is not None and st.tool_started >= 0:
            self.history.observe(st.tool, req.arrival - st.tool_started)
        expiry = self._pin_expiry.pop(req.program, None)
        if expiry is not None:
            if req.arrival < expiry:
                self.retention.returns_in_ttl += 1
            else:
                self.retention.returns_late += 1

    def on_finish(self, req: Request, view: View) -> None:
        if req.program is not None and req.last_turn:
            self.forget(req.program)

    def _prune(self, view: View) -> None:
        """Forget programs the scheduler no longer tracks (aborted or rejected turns end a
        program without ``on_finish``)."""
        for pid in [p for p in self.first if p not in view.programs]:
            self.forget(pid)

    def forget(self, program: int) -> None:
        """Drop a finished program's bookkeeping (subclasses extend)."""
        self.first.pop(program, None)
        self._pin_expiry.pop(program, None)

    # -- retention helpers ----------------------------------------------------------------
    @staticmethod
    def retainable(req: Request) -> bool:
        """Only a non-last turn of a program has a next turn that could reuse its KV."""
        return req.program is not None and not req.last_turn and req.num_computed > 0

    def grant(self, req: Request, ttl: float | None, view: View) -> float | None:
        """Record a retention decision (``None``/<=0 = decline) and return it."""
        if ttl is None or not ttl > 0 or not math.isfinite(ttl):
            self.retention.declined += 1
            return None
        self.retention.pins += 1
        self.retention.pinned_tokens += req.num_computed
        self.retention.pin_seconds_asked += ttl
        self._pin_expiry[req.program] = view.now + ttl
        heapq.heappush(self._expiries, view.now + ttl)
        return ttl

    def next_wakeup(self, view: View) -> float | None:
        """Idle with work queued: the next pin expiry frees memory with no event, so plan a
        step then (a waiting turn blocked behind pins must not wait for an unrelated event)."""
        heap = self._expiries
        while heap and heap[0] <= view.now:
            heapq.heappop(heap)
        return heap[0] if heap else None


def pressure(view: View) -> float:
    """Share of the KV cache in demand now: held blocks, or 1 when requests are queued."""
    if view.waiting:
        return 1.0
    return 1.0 - view.free_blocks / view.total_blocks if view.total_blocks else 1.0
