"""Program-level ordering: ``program_fcfs`` (workflow-atomic FCFS) and ``saga`` (agent fair
share across tenants).

Why programs and not calls: a user waits for the whole program. Per-call FCFS lets each new
program's first turn cut in front of the returning turns of programs that started long
before, so every program drags on (program JCT grows with the number of programs in flight).
Ordering every turn by its program's first arrival finishes programs one after another, the
workflow-atomic scheduling of SAGA and Continuum's program-level FCFS.

``saga`` adds fairness between tenants (SAGA reports fair agent service across users): a
virtual counter per tenant of tokens computed for it, divided by its weight (VTC, Sheng et al.
OSDI'24, counts service the same way); the tenant with the least service goes first, and within
a tenant its programs go in first-arrival order. A tenant returning from idle is lifted to the
least counter among backlogged tenants, so idling does not bank credit. Optionally it pins a
finished turn's KV for ``ttl`` seconds when the tool's expected duration is shorter (Continuum's
fixed mode); ``ttl=0`` turns retention off.
"""

from __future__ import annotations

from collections import defaultdict

from sluice.core.request import Request
from sluice.errors import ConfigError
from sluice.policies.agent import ProgramPolicy
from sluice.policies.base import View, register


@register("program_fcfs")
class ProgramFCFS(ProgramPolicy):
    """Every turn ordered by its program's first arrival; no retention."""

    scheduler_defaults = {"enable_prefix_caching": True}


@register("saga")
class Saga(ProgramPolicy):
    static_key = False
    scheduler_defaults = {"enable_prefix_caching": True}
    defaults = {**ProgramPolicy.defaults, "ttl": 10.0}

    def __init__(self, **options) -> None:
        super().__init__(**options)
        if float(self.opts["ttl"]) < 0:
            raise ConfigError(f"saga: ttl must be >= 0, got {self.opts['ttl']!r}")
        self.service: dict[str, int] = defaultdict(int)  # tokens computed per tenant
        self.weight: dict[str, float] = {}
        self.live: dict[str, int] = defaultdict(int)  # programs (or lone calls) in flight

    def key(self, req: Request, now: float) -> tuple:
        return (self.service[req.user] / self.weight.get(req.user, req.weight),) + \
            super().key(req, now)

    def on_arrival(self, req: Request, view: View) -> None:
        new = req.program is None or req.program not in self.first
        super().on_arrival(req, view)
        if not new:
            return
        u = req.user
        self.weight[u] = req.weight
        if self.live[u] == 0:
            self._lift(u)
        self.live[u] += 1

    def _lift(self, user: str) -> None:
        """VTC's counter lift: a tenant that was idle starts at the least backlogged counter."""
        busy = [self.service[t] / self.weight[t] for t, n in self.live.items() if n > 0]
        if busy:
            floor = min(busy) * self.weight[user]
            if self.service[user] < floor:
                self.service[user] = int(floor)

    def on_step(self, served: list[tuple[Request, int]], view: View) -> None:
        svc = self.service
        for req, n in served:
            svc[req.user] += n

    def on_decode_run(self, reqs: list[Request], k: int, view: View) -> None:
        svc = self.service
        for req in reqs:
            svc[req.user] += k

    def on_finish(self, req: Request, view: View) -> None:
        super().on_finish(req, view)
        if req.last_turn or req.program is None:
            self.live[req.user] = max(0, self.live[req.user] - 1)

    def retain(self, req: Request, view: View) -> float | None:
        ttl = float(self.opts["ttl"])
        if not self.retainable(req) or ttl <= 0:
            return None
        return self.grant(req, ttl if self.history.mean(req.tool) <= ttl else None, view)
