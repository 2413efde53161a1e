"""The discrete-event loop: virtual clock, event heap, one replica's steps (DESIGN §4).

Events are arrivals (streamed from the workload, never all in memory), follow-up arrivals
(agent turns after their tool time, pushed on the heap), and the end of the step in flight.
Order at equal times is fixed: the step ending at ``t`` is applied first, then every event at
``<= t`` in (time, sequence) order, then the next step is planned - the same order a real
engine sees (requests that arrived during a step join the next one).

Interruptible prefill: when the step in flight allows it and the policy agrees, an arrival at
time ``a`` cuts the step at the next layer boundary after ``a``; the completed layers' KV is kept
and the scheduler resumes the chunk from there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from sluice.core.engine import Engine
from sluice.core.plan import StepPlan, StepResult
from sluice.core.request import Request
from sluice.sim.events import EventLoop, PendingEvents
from sluice.sim.fastforward import DecodeRun, apply_decode_run, plan_decode_run
from sluice.workload.base import Workload


@dataclass(slots=True)
class InFlight:
    start: float
    end: float
    plan: StepPlan | None = None
    result: StepResult | None = None
    run: DecodeRun | None = None


@dataclass(slots=True)
class LoopStats:
    steps_planned: int = 0
    fast_forward_runs: int = 0
    fast_forward_steps: int = 0
    interruptions: int = 0
    kv_used_step_sum: int = 0  # sum over steps of KV blocks in use
    kv_steps: int = 0
    kv_samples: list[tuple[float, int]] = field(default_factory=list)
    pin_samples: list[tuple[float, int]] = field(default_factory=list)  # (t, pinned blocks)


class SimLoop(EventLoop):
    def __init__(self, engine: Engine, workload: Workload, *, fast_forward: bool = True,
                 on_request_end: Callable[[Request], None] | None = None,
                 kv_sample_every: float = 1.0) -> None:
        self.engine = engine
        self.workload = workload
        self.fast_forward = fast_forward
        self.on_request_end = on_request_end
        self.now = 0.0
        self.stats = LoopStats()
        self.events = PendingEvents(workload)
        self._inflight: InFlight | None = None
        self._kv_sample_every = kv_sample_every
        self._next_kv_sample = 0.0

    # -- events ---------------------------------------------------------------------------
    def _arrive(self, req: Request | None) -> None:
        if req is None:  # a policy wake-up: nothing arrives, the next plan may differ
            return
        engine = self.engine
        if not engine.add_request(req, req.arrival):
            self._ended(req)
            return
        fl = self._inflight
        if (fl is not None and fl.plan is not None and fl.plan.interruptible
                and fl.result.layers_done is None and req.arrival < fl.end
                and engine.policy.interrupt_for(req, engine.scheduler.view(req.arrival))):
            self._interrupt(fl, req.arrival)

    def _interrupt(self, fl: InFlight, at: float) -> None:
        layers = fl.plan.num_layers
        span = fl.end - fl.start
        done = max(1, math.ceil((at - fl.start) / span * layers)) if span > 0 else layers
        if done >= layers:
            return
        fl.end = fl.start + span * done / layers
        fl.result = StepResult(duration=fl.end - fl.start, layers_done=done)
        self.stats.interruptions += 1

    def _ended(self, req: Request) -> None:
        if self.on_request_end is not None:
            self.on_request_end(req)
        self.events.request_ended(req, self.now)

    # -- steps ----------------------------------------------------------------------------
    def _start_step(self, now: float) -> None:
        engine = self.engine
        if self.fast_forward:
            horizon = self.events.next_time()
            pin_t = engine.kv.next_pin_expiry()
            if pin_t is not None and pin_t < horizon:
                horizon = pin_t
            run = plan_decode_run(engine, now, horizon)
            if run is not None:
                self.stats.fast_forward_runs += 1
                self.stats.fast_forward_steps += run.k
                self._inflight = InFlight(now, float(run.ends[-1]), run=run)
                return
        begun = engine.begin(now)
        if begun is None:
            self._inflight = None
            self._maybe_wake(now)
            return
        plan, result = begun
        self.stats.steps_planned += 1
        self._inflight = InFlight(now, now + result.duration, plan, result)

    def _maybe_wake(self, now: float) -> None:
        """Idle with work queued: the policy may ask to be asked again at a later time."""
        engine = self.engine
        if not engine.has_work:
            return
        t = engine.policy.next_wakeup(engine.scheduler.view(now))
        if t is not None and t > now:
            self.events.wake_at(t)

    @property
    def has_work(self) -> bool:
        return self.engine.has_work

    def _complete_step(self, fl: InFlight) -> None:
        self._sample_kv_step(fl)
        self.now = fl.end
        if fl.run is not None:
            ended = apply_decode_run(self.engine, fl.run)
        else:
            ended = self.engine.complete(fl.plan, fl.result, fl.end)
        for req in ended:
            self._ended(req)

    def _sample_kv_step(self, fl: InFlight) -> None:
        """Account KV use over the step(s) ending now. The mean is step-weighted and summed
        in integers, so a fast-forwarded run adds exactly what its steps would one by one."""
        used = self.engine.kv.num_used
        st = self.stats
        if fl.run is None:
            st.kv_used_step_sum += used
            st.kv_steps += 1
            self._maybe_sample(fl.end, used)
            return
        k = fl.run.k
        st.kv_used_step_sum += k * used + sum(k - j + 1 for j, _i in fl.run.allocs)
        st.kv_steps += k
        if fl.end < self._next_kv_sample:  # no sample due within the run (the usual case)
            return
        ends = fl.run.ends
        j = int(ends.searchsorted(self._next_kv_sample, side="left"))
        while j < k:
            a = sum(1 for step, _i in fl.run.allocs if step <= j + 1)
            self._maybe_sample(float(ends[j]), used + a)
            j = int(ends.searchsorted(self._next_kv_sample, side="left"))

    def _maybe_sample(self, t: float, used: int) -> None:
        if t >= self._next_kv_sample:
            self.stats.kv_samples.append((t, used))
            if self.engine.kv.pins:
                self.stats.pin_samples.append((t, self.engine.kv.pinned_blocks))
            self._next_kv_sample = t + self._kv_sample_every
