"""Continuum (Li et al., "Continuum: Efficient and Robust Multi-Turn LLM Agent Scheduling with
KV Cache Time-to-Live", 2025): pin a finished turn's KV for a time-to-live across the tool call,
and order returning turns by their program's first arrival.

Why a TTL and not "keep until it returns": a tool call may never come back soon (a test suite, a
human), and KV held for it starves everyone else. The TTL bounds that bet. Within it the pin is
kept from *new waiting* requests (``yield_to_waiting=false``, the default): vLLM evicts a
finished turn's KV as soon as new requests wait, which is exactly what the paper changes, and a
new request that does not fit waits for the next expiry (``next_wakeup``), so held context
doubles as admission control. Running requests' growth and resuming preempted requests still
reclaim pins (soonest expiry first), so a pin never stalls work already running, and so does
any request while nothing runs (``Scheduler._pins_yield``); a program's pins go when its last
turn ends. ``yield_to_waiting=true`` lets waiting requests reclaim pins too (the
earlier behaviour): on agent-coding at 0.5 programs/s 39% of returns then found their pin
reclaimed, most within a second of being made (docs/results.md).

Modes (``--policy-opt mode=...``):

* ``fixed``: pin for ``ttl`` seconds when the tool's expected duration is below ``ttl``.
* ``utility``: choose tau maximising ``P(T <= tau) * saved - pressure * share * E[min(T, tau)]``
  in GPU-seconds: ``saved = context tokens * prefill_s_per_token`` (the re-prefill a hit
  avoids), ``share`` = the pin's fraction of the KV cache, ``pressure`` = the fraction of the
  cache in demand (1 when requests queue). Holding share m of a full cache for t seconds costs
  about m*t of the GPU's throughput; on an idle cache it costs nothing. T's distribution is the
  tool's duration history with an exponential prior at cold start (:class:`ToolHistory`).
  ``memory_weight`` scales the memory term: a cache near its thrashing cliff is worth more
  than its linear share.
"""

from __future__ import annotations

import numpy as np

from sluice.core.request import Request
from sluice.errors import ConfigError
from sluice.policies.agent import ProgramPolicy, pressure
from sluice.policies.base import View, register

MODES = ("fixed", "utility")


@register("continuum")
class Continuum(ProgramPolicy):
    scheduler_defaults = {"enable_prefix_caching": True}
    defaults = {**ProgramPolicy.defaults, "mode": "utility", "ttl": 10.0,
                "prefill_s_per_token": 6e-5, "max_ttl": 600.0, "slack": 0.5,
                "memory_weight": 4.0, "yield_to_waiting": False}

    def __init__(self, **options) -> None:
        super().__init__(**options)
        if self.opts["mode"] not in MODES:
            raise ConfigError(f"continuum: mode {self.opts['mode']!r}; valid: {', '.join(MODES)}")
        for k in ("ttl", "prefill_s_per_token", "max_ttl", "memory_weight"):
            if not float(self.opts[k]) > 0:
                raise ConfigError(f"continuum: {k} must be > 0, got {self.opts[k]!r}")
        if not isinstance(self.opts["yield_to_waiting"], bool):
            raise ConfigError("continuum: yield_to_waiting must be true or false, got "
                              f"{self.opts['yield_to_waiting']!r}")
        # False: a pin gives way only to running requests' growth (and its expiry), so held
        # context also keeps new work out while the cache is full (admission control)
        self.pins_yield_to_waiting = self.opts["yield_to_waiting"]

    def retain(self, req: Request, view: View) -> float | None:
        if not self.retainable(req):
            return None
        if self.opts["mode"] == "fixed":
            ttl = float(self.opts["ttl"])
            return self.grant(req, ttl if self.history.mean(req.tool) <= ttl else None, view)
        tau = self.utility_ttl(req, view)
        return self.grant(req, None if tau is None else tau + float(self.opts["slack"]), view)

    def utility_ttl(self, req: Request, view: View) -> float | None:
        """The tau with the best expected net saving, or None if no tau saves anything."""
        h, tool = self.history, req.tool
        mu = h.prior_mu()
        cands = np.concatenate((h.samples(tool), mu * np.array([0.25, 0.5, 1.0, 2.0, 3.0, 4.6])))
        cands = np.unique(np.clip(cands, 1e-3, float(self.opts["max_ttl"])))
        saved = req.num_computed * float(self.opts["prefill_s_per_token"])
        blocks = req.num_computed // view.block_size
        share = blocks / view.total_blocks if view.total_blocks else 1.0
        cost = float(self.opts["memory_weight"]) * pressure(view) * share
        value = h.cdf(tool, cands) * saved - cost * h.expected_min(tool, cands)
        best = int(np.argmax(value))
        return float(cands[best]) if value[best] > 0 else None
