"""The simulated executor: prices a step with a PerfModel and plays the oracle.

The oracle is the only place that knows a request's true output length (``req.true_output``):
it reports EOS when the token it samples is the last one (DESIGN principle 3).
"""

from __future__ import annotations

import math
from typing import Callable

from sluice.core.plan import BatchStats, StepPlan, StepResult
from sluice.core.request import Request
from sluice.perf.base import PerfModel


class SimulatedExecutor:
    def __init__(self, perf: PerfModel, *, swap_overlap: bool = False) -> None:
        self.perf = perf
        self.swap_overlap = swap_overlap  # swap copies hidden behind compute when possible

    def execute(self, plan: StepPlan) -> StepResult:
        duration = self.duration(plan)
        finished = set()
        for ch in plan.chunks:
            req = ch.req
            if (ch.start + ch.n_tokens == req.num_tokens and req.true_output is not None
                    and req.num_output + 1 >= req.true_output):
                finished.add(req.id)
        for req in plan.decodes:
            t = req.true_output
            if t is not None and req.num_output + 1 >= t:
                finished.add(req.id)
        return StepResult(duration, None, finished)

    def duration(self, plan: StepPlan,
                 step_time: Callable[[BatchStats], float] | None = None) -> float:
        """Seconds for ``plan``: its compute (``step_time``, by default the perf model's) plus
        the swap copies. The DP+EP lock step reprices a rank's compute through ``step_time``."""
        duration = (step_time or self.perf.step_time)(plan.stats)
        if plan.swap_in or plan.swap_out:
            duration = self._add_swaps(plan, duration)
        return duration

    def _add_swaps(self, plan: StepPlan, compute: float) -> float:
        blocks = runs = 0
        for _req, ids in plan.swap_out + plan.swap_in:
            blocks += len(ids)
            runs += contiguous_runs(ids)
        t = self.perf.swap_time(blocks, runs)
        return max(compute, t) if self.swap_overlap else compute + t

    @staticmethod
    def steps_to_eos(req: Request) -> float:
        """Decode steps until the oracle's EOS (inf if the request has no true length)."""
        if req.true_output is None:
            return math.inf
        return req.true_output - req.num_output


def contiguous_runs(ids: list[int]) -> int:
    """Number of maximal runs of consecutive block ids (fewer runs = larger transfers)."""
    if not ids:
        return 0
    return 1 + sum(1 for a, b in zip(ids, ids[1:]) if b != a + 1)
