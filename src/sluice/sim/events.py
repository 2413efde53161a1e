"""What can happen next besides a step ending, for the simulation loops (DESIGN §4).

Arrivals stream from the workload (never all in memory); follow-up requests it returns when a
request ends (an agent's next turn after its tool time) and policy wake-ups (``None``) wait on
a heap. Order is (time, sequence), the stream before the heap at equal times, so a run is
deterministic. One copy serves the single-replica loop and the data-parallel lock-step loop.
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Iterator

from sluice.core.request import Request
from sluice.workload.base import Workload

INF = math.inf


class PendingEvents:
    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        self._heap: list[tuple[float, int, Request | None]] = []  # None = policy wake-up
        self._seq = itertools.count()
        self._arrivals: Iterator[Request] = iter(workload.requests())
        self._next: Request | None = next(self._arrivals, None)

    def next_time(self) -> float:
        t = self._next.arrival if self._next is not None else INF
        if self._heap and self._heap[0][0] < t:
            t = self._heap[0][0]
        return t

    def pop(self) -> Request | None:
        """The earliest pending request, or None for a policy wake-up."""
        if self._next is not None and (not self._heap or self._next.arrival <= self._heap[0][0]):
            req = self._next
            self._next = next(self._arrivals, None)
            if self._next is not None and self._next.arrival < req.arrival:
                raise ValueError(f"workload {self.workload.name!r} is not sorted by arrival: "
                                 f"request {self._next.id} at {self._next.arrival} after "
                                 f"{req.id} at {req.arrival}")
            return req
        return heapq.heappop(self._heap)[2]

    def request_ended(self, req: Request, now: float) -> None:
        """Queue the workload's follow-ups to ``req``, which ended at ``now``."""
        for follow in self.workload.on_request_end(req, now):
            if follow.arrival < now:
                raise ValueError(f"follow-up request {follow.id} arrives at {follow.arrival}, "
                                 f"before its cause ended at {now}")
            heapq.heappush(self._heap, (follow.arrival, next(self._seq), follow))

    def wake_at(self, t: float) -> None:
        """Ask the loop to plan again at ``t`` unless something already happens sooner."""
        if not self._heap or self._heap[0][0] > t:
            heapq.heappush(self._heap, (t, next(self._seq), None))


class EventLoop:
    """The order of a discrete-event run, shared by the single-replica and the lock-step
    loop: the step in flight ending at ``t`` is applied first, then every event at ``<= t``
    in (time, sequence) order, then the next step is planned — the order a real engine sees
    (requests that arrived during a step join the next one).

    Subclasses hold ``events`` (PendingEvents), ``now``, ``_inflight`` (anything with an
    ``end``, or None) and provide ``has_work``, ``_arrive``, ``_start_step`` and
    ``_complete_step``."""

    events: PendingEvents
    now: float
    _inflight: object | None

    @property
    def has_work(self) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def _arrive(self, req: Request | None) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _start_step(self, now: float) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _complete_step(self, step) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def run(self, progress=None) -> float:
        """Run to completion; returns the virtual time of the last event."""
        while True:
            step = self._inflight
            t_event = self.events.next_time()
            if step is not None and step.end <= t_event:
                self._complete_step(step)
                self._inflight = None
                self._drain_due(self.now)
                self._start_step(self.now)
                continue
            if t_event == INF:
                if step is None and self.has_work:
                    self._start_step(self.now)
                    if self._inflight is None:
                        raise RuntimeError("there is work but nothing was planned (stuck)")
                    continue
                break
            self.now = max(self.now, t_event)
            self._arrive(self.events.pop())
            if self._inflight is None:
                self._drain_due(self.now)
                self._start_step(self.now)
            if progress is not None:
                progress(self.now)
        return self.now

    def _drain_due(self, now: float) -> None:
        while self.events.next_time() <= now:
            self._arrive(self.events.pop())
