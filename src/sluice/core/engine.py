"""Engine = Scheduler + KVCache + Executor: one replica.

``step(now)`` is schedule -> execute -> update, identical under the simulator's virtual clock and
the server's wall clock (DESIGN principle 2). The simulator splits it in two (``begin`` at the
step's start, ``complete`` at its end) because time passes in between.
"""

from __future__ import annotations

from typing import Protocol

from sluice.core.plan import StepPlan, StepResult
from sluice.core.request import Request
from sluice.core.scheduler import Scheduler


class Executor(Protocol):
    def execute(self, plan: StepPlan) -> StepResult: ...


class Engine:
    def __init__(self, scheduler: Scheduler, executor: Executor) -> None:
        self.scheduler = scheduler
        self.executor = executor
        self.kv = scheduler.kv
        self.policy = scheduler.policy
        self.steps = 0

    def add_request(self, req: Request, now: float) -> bool:
        """Queue a request; False if it was rejected (``req.stop_reason`` says why)."""
        return self.scheduler.add(req, now)

    def abort(self, req: Request, now: float) -> None:
        self.scheduler.abort(req, now)

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work

    def begin(self, now: float) -> tuple[StepPlan, StepResult] | None:
        """Plan and execute one step starting at ``now``; None if there is nothing to run."""
        plan = self.scheduler.schedule(now)
        if plan.empty:
            return None
        self.steps += 1
        return plan, self.executor.execute(plan)

    def complete(self, plan: StepPlan, result: StepResult, end: float) -> list[Request]:
        """Apply the step's result at its end time; returns requests that ended."""
        return self.scheduler.update(plan, result, end)

    def step(self, now: float) -> tuple[StepPlan, StepResult, list[Request]] | None:
        """Wall-clock engines: one whole step; the result's duration is measured."""
        begun = self.begin(now)
        if begun is None:
            return None
        plan, result = begun
        return plan, result, self.complete(plan, result, now + result.duration)
