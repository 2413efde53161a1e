"""Data-parallel ranks of an MoE model, stepped in lock step (vLLM DP + EP).

vLLM runs the DP ranks of an MoE model as separate engines that take every step together: each
MoE layer exchanges tokens across the ranks (all-gather dispatch, reduce-scatter combine), so a
rank cannot start layer ``i+1`` before every rank finished layer ``i``, and a rank with nothing
to run executes a dummy batch while any other rank is busy. A step therefore lasts as long as
the slowest rank's step, and all ranks start the next one at the same instant.

Arrivals are sent to a rank by vLLM's front-end load balancer (:class:`DPBalancer`) and join
that rank's next step, as in :mod:`sluice.sim.loop`. Requests never move between ranks.

Not modelled here: fast-forward (every step is planned), interruptible prefill (vLLM has none),
and a separate cost for the per-step DP synchronisation (a small all-reduce of token counts,
tens of microseconds against steps of tens of milliseconds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from sluice.core.engine import Engine
from sluice.core.plan import StepPlan, StepResult
from sluice.core.request import Request
from sluice.sim.events import EventLoop, PendingEvents
from sluice.workload.base import Workload

INF = math.inf


class DPBalancer:
    """vLLM 0.19's internal DP load balancer (``DPLBAsyncMPClient.get_core_engine_for_request``
    in ``vllm/v1/engine/core_client.py``).

    Each request goes to the rank with the lowest ``4 * waiting + running``, ties to the lowest
    rank index. The counts are a snapshot the DP coordinator publishes every 100 ms while they
    change; between snapshots the front end adds one to the chosen rank's waiting count, so a
    burst alternates between ranks. Here a snapshot of the ranks' queue lengths replaces the
    front end's view at every multiple of ``interval`` of virtual time (when nothing changed,
    the view already equals the counts, so skipping the publication would change nothing).
    """

    name = "vllm"

    def __init__(self, ranks: int, interval: float = 0.1, waiting_weight: int = 4) -> None:
        self.ranks = ranks
        self.interval = interval
        self.waiting_weight = waiting_weight
        self.view = [[0, 0] for _ in range(ranks)]  # [waiting, running] as the front end sees it
        self._next_tick = 1

    def refresh(self, t: float, engines: list[Engine]) -> None:
        """Before an event at ``t``: apply the snapshot of any tick that passed since the last
        event (the engines' counts have not changed in between, so one snapshot covers all)."""
        if t < self._next_tick * self.interval:
            return
        self.view = [[len(e.scheduler.waiting), len(e.scheduler.running)] for e in engines]
        self._next_tick = math.floor(t / self.interval) + 1

    def choose(self, req: Request) -> int:
        best, rank = INF, 0
        ww = self.waiting_weight
        for i, (waiting, running) in enumerate(self.view):
            score = ww * waiting + running
            if score < best:
                best, rank = score, i
        self.view[rank][0] += 1
        return rank


class RoundRobin:
    """Request ``i`` to rank ``i mod N`` (an ablation, not what vLLM does)."""

    name = "round_robin"

    def __init__(self, ranks: int) -> None:
        self.ranks = ranks
        self._i = 0

    def refresh(self, t: float, engines: list[Engine]) -> None:
        pass

    def choose(self, req: Request) -> int:
        rank = self._i % self.ranks
        self._i += 1
        return rank


BALANCERS = {"vllm": DPBalancer, "round_robin": RoundRobin}


@dataclass(slots=True)
class Step:
    """One lock-step step: every rank starts at ``start``; the step ends at ``end``."""

    start: float
    end: float
    begun: list[tuple[StepPlan, StepResult] | None]


@dataclass(slots=True)
class LockstepStats:
    steps: int = 0  # lock-step steps (each counts once, whatever the number of ranks)
    rank_steps: list[int] = field(default_factory=list)  # steps in which the rank ran a batch
    dummy_steps: list[int] = field(default_factory=list)  # steps it idled while another ran
    wait_s: list[float] = field(default_factory=list)  # time it waited for slower ranks
    dispatched: list[int] = field(default_factory=list)  # requests sent to it
    kv_used_step_sum: int = 0  # sum over steps of KV blocks in use, all ranks
    kv_samples: list[tuple[float, int]] = field(default_factory=list)  # (t, blocks, all ranks)


class LockstepLoop(EventLoop):
    """Drive ``engines`` (one per DP rank) in lock step through ``workload``.

    ``sync_overhead`` seconds are added to every step in which any rank runs (default 0).
    """

    def __init__(self, engines: list[Engine], workload: Workload, *,
                 balancer: DPBalancer | RoundRobin | None = None,
                 on_request_end: Callable[[Request], None] | None = None,
                 sync_overhead: float = 0.0, kv_sample_every: float = 1.0) -> None:
        if not engines:
            raise ValueError("lock step needs at least one engine")
        n = len(engines)
        self.engines = engines
        self.workload = workload
        self.balancer = balancer if balancer is not None else DPBalancer(n)
        self.on_request_end = on_request_end
        self.sync_overhead = sync_overhead
        self.now = 0.0
        self.stats = LockstepStats(rank_steps=[0] * n, dummy_steps=[0] * n, wait_s=[0.0] * n,
                                   dispatched=[0] * n)
        self.events = PendingEvents(workload)
        self._inflight: Step | None = None
        self._kv_sample_every = kv_sample_every
        self._next_kv_sample = 0.0

    @property
    def has_work(self) -> bool:
        return any(e.has_work for e in self.engines)

    # -- events ---------------------------------------------------------------------------
    def _arrive(self, req: Request | None) -> None:
        if req is None:  # a policy wake-up: nothing arrives, the next plan may differ
            return
        self.balancer.refresh(req.arrival, self.engines)
        rank = self.balancer.choose(req)
        self.stats.dispatched[rank] += 1
        if not self.engines[rank].add_request(req, req.arrival):
            self._ended(req)

    def _ended(self, req: Request) -> None:
        if self.on_request_end is not None:
            self.on_request_end(req)
        self.events.request_ended(req, self.now)

    # -- steps ----------------------------------------------------------------------------
    def _start_step(self, now: float) -> None:
        begun = [e.begin(now) for e in self.engines]
        span = -1.0
        for b in begun:
            if b is not None and b[1].duration > span:
                span = b[1].duration
        if span < 0.0:
            self._inflight = None
            self._maybe_wake(now)
            return
        span += self.sync_overhead
        st = self.stats
        st.steps += 1
        for i, b in enumerate(begun):
            if b is None:
                st.dummy_steps[i] += 1
                st.wait_s[i] += span
            else:
                st.rank_steps[i] += 1
                st.wait_s[i] += span - b[1].duration
        self._inflight = Step(now, now + span, begun)

    def _maybe_wake(self, now: float) -> None:
        """All ranks idle with work queued: a policy may ask to be asked again later."""
        t_wake = INF
        for e in self.engines:
            if e.has_work:
                t = e.policy.next_wakeup(e.scheduler.view(now))
                if t is not None and now < t < t_wake:
                    t_wake = t
        if t_wake < INF:
            self.events.wake_at(t_wake)

    def _complete_step(self, step: Step) -> None:
        self.balancer.refresh(step.end, self.engines)  # a snapshot taken before the step ends
        self.now = step.end
        used = 0
        for engine, b in zip(self.engines, step.begun):
            if b is not None:
                for req in engine.complete(b[0], b[1], step.end):
                    self._ended(req)
            used += engine.kv.num_used
        self.stats.kv_used_step_sum += used
        if step.end >= self._next_kv_sample:
            self.stats.kv_samples.append((step.end, used))
            self._next_kv_sample = step.end + self._kv_sample_every
