"""KVFlow (Pan et al., "KVFlow: Efficient Prefix Caching for Accelerating LLM-Based Multi-Agent
Workflows", 2025): decide which cached prefixes stay by *steps-to-execution* - the work that
will run soonest keeps its KV - instead of by recency.

Why recency is wrong for agents: LRU treats a context freed at the start of a tool call as
cold, yet that program is coming back; and it treats every idle program alike, whether its tool
returns in 0.2 s or in 5 minutes. KVFlow ranks by when each agent will next execute (from its
workflow graph); a program here has no graph, so its next execution is predicted from the
duration history of the tool it is calling (exponential prior at cold start).

With the mechanism's hooks: on each turn's end the program's predicted return time joins a
ranking of all idle programs; the soonest-returning ones whose contexts fit ``budget`` of the
KV capacity are pinned (until the ``quantile``-th percentile of their tool's duration), the
rest fall back to plain LRU caching. Under memory pressure pins are given up latest-return
first (``reclaim_key``), the eviction order by steps-to-execution, not by expiry (which would
drop the soonest-returning programs' KV first). Scheduling order stays vLLM's FCFS so the
comparison with LRU isolates retention. Not expressible yet: prefetch of host-tier KV ahead of
the return (needs a mechanism hook; docs/policies.md).
"""

from __future__ import annotations

import math
from typing import NamedTuple

from sluice.core.kv import Pin
from sluice.core.request import Request
from sluice.errors import ConfigError
from sluice.policies.agent import ProgramPolicy
from sluice.policies.base import View, register


class IdleProgram(NamedTuple):
    """A pinned program in its tool call: when it was predicted back when pinned (``eta``),
    its pin's expiry and size, and the call's start and tool (to re-predict at reclaim)."""

    eta: float
    expiry: float
    blocks: int
    start: float
    tool: str | None


@register("kvflow")
class KVFlow(ProgramPolicy):
    scheduler_defaults = {"enable_prefix_caching": True}
    defaults = {**ProgramPolicy.defaults, "budget": 0.6, "quantile": 0.9}

    def __init__(self, **options) -> None:
        super().__init__(**options)
        if not 0 < float(self.opts["budget"]) <= 1 or not 0 < float(self.opts["quantile"]) < 1:
            raise ConfigError("kvflow: budget must be in (0, 1] and quantile in (0, 1)")
        self.idle: dict[int, IdleProgram] = {}
        self.queued: set[int] = set()  # programs whose next turn arrived and is not yet admitted

    def key(self, req: Request, now: float) -> tuple:
        return (req.arrival, req.id)  # vLLM FCFS: retention is the only change

    def victim(self, running: list[Request], view: View) -> Request:
        return max(running, key=lambda r: r.admitted_seq)

    def retain(self, req: Request, view: View) -> float | None:
        if not self.retainable(req):
            return None
        now = view.now
        eta = now + self.history.mean(req.tool)
        blocks = req.num_computed // view.block_size
        ahead = sum(p.blocks for p in self.idle.values() if p.eta <= eta and p.expiry > now)
        if ahead + blocks > float(self.opts["budget"]) * view.total_blocks:
            return self.grant(req, None, view)
        ttl = self.history.quantile(req.tool, float(self.opts["quantile"]))
        self.idle[req.program] = IdleProgram(eta, now + ttl, blocks, now, req.tool)
        return self.grant(req, ttl, view)

    def reclaim_key(self, pin: Pin, view: View) -> tuple:
        """Latest predicted return first, re-predicted now: a call already ``elapsed`` seconds
        old is expected back in ``E[T - elapsed | T > elapsed]`` (``expected_residual``), so
        an overdue call of a heavy-tailed tool ranks late, not early. A program whose next
        turn is queued is the next to execute: its pin, the only thing holding that KV, goes
        last; once the turn is admitted its blocks are held anyway, so the pin goes first."""
        if pin.owner in self.queued:
            return (0.0, pin.id)
        idle = self.idle.get(pin.owner) if pin.owner is not None else None
        if idle is None:
            return (-math.inf, pin.id)
        return (-self.history.expected_residual(idle.tool, view.now - idle.start), pin.id)

    def on_arrival(self, req: Request, view: View) -> None:
        super().on_arrival(req, view)
        if req.program is not None:
            if self.idle.pop(req.program, None) is not None:
                self.queued.add(req.program)

    def on_admit(self, req: Request, view: View) -> None:
        self.queued.discard(req.program)

    def forget(self, program: int) -> None:
        super().forget(program)
        self.idle.pop(program, None)
        self.queued.discard(program)
