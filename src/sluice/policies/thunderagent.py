"""ThunderAgent (program-aware agentic inference, 2025): schedule *programs*, keep the working
set of active programs in KV, pause whole programs instead of letting every program thrash.

Why: with per-call scheduling and LRU caching, once the programs' contexts outgrow the KV cache
every returning turn finds its context evicted by the others and re-prefills all of it - the
classic LRU thrashing of a cyclic working set; throughput collapses exactly when load is high.
ThunderAgent's answer is the operating system's: admit programs while their contexts fit,
keep their KV across tool calls, and make the rest wait whole (paused) rather than all run
badly.

Here, with the mechanism's hooks:

* **active set** - a program becomes active when its turn is admitted past the gate
  (:meth:`admit`): the footprints of active programs plus the newcomer must fit ``target`` of
  the KV capacity. A program's footprint is its context now (``footprint=current``, default:
  reactive, as the paper pauses when memory actually runs short) or, if larger, the mean
  final context of the programs finished so far (``footprint=final``: contexts grow every
  turn, and admitting on today's size overcommits the cache a few turns later, at the price of
  fewer programs in flight). Turns of active programs bypass the gate and run first
  (:meth:`key`).
* **retention** - an active program's finished turn is pinned for ``hold`` seconds, so its KV
  survives the tool call; the mechanism reclaims pins soonest-expiry first under pressure,
  i.e. the program idle longest is paused first.
* **pause** - an idle program leaves the active set (a) when the active programs' contexts
  have grown past the target: the longest-idle ones go first, the same order in which the
  mechanism reclaims their pins (equal holds expire oldest-first); (b) when its hold runs out;
  (c) with ``decay`` = tau > 0, when its priority ``exp(-idle / tau)`` falls below
  ``demote_below`` while a new program waits at the gate (the paper's idle-priority decay).
  A paused program's next turn must pass the gate again (older paused programs first). Its KV
  falls to the LRU when its pin is reclaimed or expires (dropping it at once, or moving it to
  host, needs mechanism hooks; see docs/policies.md).
"""

from __future__ import annotations

import math

from sluice.core.request import Request
from sluice.errors import ConfigError
from sluice.policies.agent import ProgramPolicy
from sluice.policies.base import View, register


@register("thunderagent")
class ThunderAgent(ProgramPolicy):
    static_key = False
    skip_blocked = True
    scheduler_defaults = {"enable_prefix_caching": True}
    defaults = {**ProgramPolicy.defaults, "target": 0.9, "hold": 60.0, "decay": 0.0,
                "demote_below": 0.5, "footprint": "current"}

    def __init__(self, **options) -> None:
        super().__init__(**options)
        o = self.opts
        if not 0 < float(o["target"]) <= 1.5 or not float(o["hold"]) > 0:
            raise ConfigError("thunderagent: target must be in (0, 1.5] and hold > 0")
        if float(o["decay"]) < 0 or not 0 < float(o["demote_below"]) < 1:
            raise ConfigError("thunderagent: decay must be >= 0 and demote_below in (0, 1)")
        if o["footprint"] not in ("current", "final"):
            raise ConfigError("thunderagent: footprint must be 'current' or 'final'")
        self.ctx: dict[int, int] = {}  # active program -> context tokens (its KV footprint)
        self.idle_since: dict[int, float] = {}  # active program in a tool phase -> since
        self.paused = 0  # programs demoted while idle (counter)
        self._final_sum = 0  # final contexts of finished programs (footprint estimate)
        self._final_n = 0
        self._used_at: tuple[float, int, float] | None = None  # (now, version, footprint sum)
        self._version = 0

    # -- order ----------------------------------------------------------------------------
    def key(self, req: Request, now: float) -> tuple:
        cls = 0 if req.program is None or req.program in self.ctx else 1
        return (cls,) + super().key(req, now)

    # -- gate -----------------------------------------------------------------------------
    def admit(self, req: Request, view: View) -> bool:
        pid = req.program
        if pid is None or pid in self.ctx:
            return True
        cap = float(self.opts["target"]) * view.total_blocks * view.block_size
        need = max(req.prompt_len, self._estimate())
        if self._footprint(view.now) + need > cap:
            self._demote_idle(view)
            if self.ctx and self._footprint(view.now) + need > cap:
                return False
        self._set(pid, req.prompt_len)
        return True

    def _estimate(self) -> int:
        if self.opts["footprint"] == "current" or not self._final_n:
            return 0
        return self._final_sum // self._final_n

    def _footprint(self, now: float) -> float:
        """Sum of active footprints; cached per (time, change) since admit runs per waiting
        turn and each step may ask many times."""
        c = self._used_at
        if c is not None and c[0] == now and c[1] == self._version:
            return c[2]
        est = self._estimate()
        total = float(sum(x if x > est else est for x in self.ctx.values()))
        self._used_at = (now, self._version, total)
        return total

    def _shrink(self, view: View) -> None:
        """Contexts grew past the target: pause the longest-idle programs until they fit."""
        cap = float(self.opts["target"]) * view.total_blocks * view.block_size
        if self._footprint(view.now) <= cap or not self.idle_since:
            return
        for pid in sorted(self.idle_since, key=lambda p: (self.idle_since[p], p)):
            self._drop(pid)
            self.paused += 1
            if self._footprint(view.now) <= cap:
                return

    def _demote_idle(self, view: View) -> None:
        """Pause active programs whose hold ran out (or whose priority decayed) or which the
        scheduler no longer tracks."""
        for pid in list(self.ctx):
            if pid not in view.programs:
                self._drop(pid)
            elif pid in self.idle_since and view.now >= self._demote_at(pid):
                self._drop(pid)
                self.paused += 1

    def _demote_at(self, pid: int) -> float:
        t = float(self.opts["hold"])
        tau = float(self.opts["decay"])
        if tau > 0:
            t = min(t, tau * math.log(1.0 / float(self.opts["demote_below"])))
        return self.idle_since[pid] + t

    def next_wakeup(self, view: View) -> float | None:
        """Idle with a program blocked at the gate: ask again when the next idle program can
        be paused."""
        times = [self._demote_at(p) for p in self.idle_since if self._demote_at(p) > view.now]
        pin = super().next_wakeup(view)
        if pin is not None:
            times.append(pin)
        return min(times) if times else None

    # -- bookkeeping ----------------------------------------------------------------------
    def on_arrival(self, req: Request, view: View) -> None:
        super().on_arrival(req, view)
        pid = req.program
        if pid in self.ctx:
            if pid in self.idle_since and view.now >= self._demote_at(pid):
                self._drop(pid)  # came back after its hold: its KV is gone, re-gate it
                self.paused += 1
            else:
                self.idle_since.pop(pid, None)
                self._set(pid, req.prompt_len)
                self._shrink(view)

    def retain(self, req: Request, view: View) -> float | None:
        if not self.retainable(req) or req.program not in self.ctx:
            return None
        self.idle_since[req.program] = view.now
        self._set(req.program, req.num_tokens)
        self._shrink(view)
        if req.program not in self.ctx:
            return self.grant(req, None, view)
        hold = float(self.opts["hold"])
        return self.grant(req, self._demote_at(req.program) - view.now if hold else None, view)

    def on_finish(self, req: Request, view: View) -> None:
        if req.program is not None and req.last_turn:
            self._final_sum += req.num_tokens
            self._final_n += 1
            self._version += 1
        super().on_finish(req, view)

    def forget(self, program: int) -> None:
        super().forget(program)
        self._drop(program)

    def _set(self, pid: int, tokens: int) -> None:
        self.ctx[pid] = tokens
        self._version += 1

    def _drop(self, pid: int) -> None:
        self.ctx.pop(pid, None)
        self.idle_since.pop(pid, None)
        self._version += 1
