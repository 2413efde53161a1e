"""Priorities: static order, and preemption of lower-priority work (FastSwitch).

* ``priority`` - vLLM's ``--scheduling-policy priority``: waiting requests by ``priority``
  (lower value first, vLLM's convention), FCFS within a level; when KV runs short the running
  request with the worst priority is the victim. A waiting request never evicts a running one.
* ``preemptive`` - what vLLM lacks (vllm-project/vllm#40004): a waiting request that cannot get
  KV blocks evicts running requests of *strictly worse* priority (``by=priority``) or strictly
  worse composed rank (``by=rank``: e.g. ``vtc+preemptive`` evicts tenants with larger fairness
  counters; ``margin`` is added to the first rank component as hysteresis), worst and most
  recently admitted first, until its blocks fit. Eviction is by swap to
  the host tier by default (``mode=swap``, FastSwitch, Shen et al. 2024) or by recompute.

FastSwitch's cost points are the mechanism's, not this policy's: the simulated executor prices
a swap by the victim's contiguous block runs (``PerfModel.swap_time(blocks, runs)``),
``SimConfig.swap_overlap`` lets swap-out overlap compute, and a swapped request is swapped back
in, not recomputed.
"""

from __future__ import annotations

from typing import Any, Callable

from sluice.core.request import Request
from sluice.errors import ConfigError
from sluice.policies.base import View, register
from sluice.policies.compose import Ranked

MODES = ("swap", "recompute")
BY = ("priority", "rank")


@register("priority")
class Priority(Ranked):
    static_key = True
    order_running = True  # budget to the most urgent running request; last in order = victim

    def rank(self, req: Request, now: float) -> tuple:
        return (req.priority,)

    def victim(self, running: list[Request], view: View) -> Request:
        return max(running, key=lambda r: (r.priority, r.admitted_seq))


@register("preemptive")
class Preemptive(Priority):
    defaults = {"mode": "swap", "by": "priority", "margin": 0.0}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        mode, by = self.opts["mode"], self.opts["by"]
        if mode not in MODES:
            raise ConfigError(f"policy 'preemptive': mode {mode!r}; valid: {', '.join(MODES)}")
        if by not in BY:
            raise ConfigError(f"policy 'preemptive': by {by!r}; valid: {', '.join(BY)}")
        self.by = by
        m = self.opts["margin"]
        if not isinstance(m, (int, float)) or m < 0:
            raise ConfigError(f"policy 'preemptive': margin must be a number >= 0, got {m!r}")
        self.margin = float(m)
        # Instance-level: the user's --preemption-mode still overrides it.
        self.scheduler_defaults = {"preemption_mode": mode}
        self.order_key: Callable[[Request, float], tuple] = self.key  # a composition sets it

    def _worse(self, now: float, req: Request) -> Callable[[Request], bool]:
        if self.by == "priority":
            return lambda r: r.priority > req.priority
        mine = self.order_key(req, now)[:-2]  # drop the (arrival, id) tie-break
        if not mine:
            return lambda r: False
        # hysteresis on the first component: without it, continuous ranks (VTC counters)
        # make two requests evict each other back and forth
        bar = (mine[0] + self.margin, *mine[1:])
        return lambda r: self.order_key(r, now)[:-2] > bar

    def preempt_for(self, req: Request, view: View) -> list[Request]:
        worse = self._worse(view.now, req)
        candidates = [r for r in view.running if worse(r)]
        if not candidates:
            return []
        bs = view.block_size
        need = -(-(req.num_tokens - req.num_computed) // bs) - view.free_blocks
        if req.host_blocks:  # a swapped request comes back whole
            need = req.host_blocks - view.free_blocks
        if self.by == "priority":
            candidates.sort(key=lambda r: (r.priority, r.admitted_seq), reverse=True)
        else:
            now = view.now
            candidates.sort(key=lambda r: (self.order_key(r, now), r.admitted_seq), reverse=True)
        victims: list[Request] = []
        freed = 0
        for r in candidates:
            if freed >= need:
                break
            victims.append(r)
            freed += len(r.blocks)
        return victims if freed >= need else []
