"""Policy options and composition (``vtc+edf``, ``past_future+sjf``).

Why here: a composition must route each ``--policy-opt`` to the part that declares it, so option
declaration and composition are one concept. Two small base classes carry the convention:

* :class:`Tunable` - a policy that declares ``defaults`` (its options) and rejects unknown ones
  with a :class:`ConfigError` listing the valid names.
* :class:`Ranked` - a policy whose order is ``rank(req, now)`` (the part its paper decides) with
  FCFS ``(arrival, id)`` as the final tie-break: ``key = rank + (arrival, id)``.

**Composition rule** (``a+b+c``):

* order: ``key = rank_a + rank_b + rank_c + (arrival, id)`` - the first part decides, each later
  one only breaks the earlier ones' ties. ``vtc+edf`` is fair across tenants (a tenant's
  requests share one counter, so they tie) and earliest-deadline-first within a tenant. A part
  without ``rank`` (the ``vllm``/``sarathi``/``orca`` baselines) contributes its whole key, which
  never ties, so later parts are then ignored: list baselines last, if at all.
* admission: every part must admit (``past_future+sjf``: Past-Future admission in front of SJF).
* ``preempt_for``/``victim``/``retain``/``prefill_layers``: the first part that overrides the
  hook decides; ``next_wakeup``: the earliest; ``interrupt_for``: any interruptible part agrees.
* bookkeeping (``on_arrival``, ``on_admit``, ``on_step``, ``on_decode_run``, ``on_finish``): every part.
* flags: ``static_key`` and ``fast_forward_safe`` only if every part's; ``order_running``,
  ``skip_blocked``, ``interruptible_prefill`` if any part's; ``pins_yield_to_waiting`` from
  the part that decides ``retain`` (whose pins they are). ``scheduler_defaults`` are merged;
  the first part that sets a knob wins.
* options go to every part that declares them (so ``predictor=history`` reaches both parts of
  ``jitserve+past_future``); a name no part declares is an error listing the valid ones.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

from sluice.core.request import Request
from sluice.errors import ConfigError
from sluice.policies.base import Policy, View, get_policy_class


class Tunable(Policy):
    """A policy with declared options: ``defaults`` maps each option name to its default."""

    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **options: Any) -> None:
        bad = sorted(set(options) - set(self.defaults))
        if bad:
            valid = ", ".join(sorted(self.defaults)) or "none"
            raise ConfigError(f"policy {self.name!r}: unknown option(s) {', '.join(bad)}; "
                              f"valid: {valid}")
        self.opts: dict[str, Any] = {**self.defaults, **options}

    def positive(self, name: str) -> float:
        """Option ``name`` as a positive finite number, or a ConfigError naming it."""
        v = self.opts[name]
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise ConfigError(f"policy {self.name!r}: option {name} must be a number, "
                              f"got {v!r}") from None
        if not (x > 0 and x < float("inf")):
            raise ConfigError(f"policy {self.name!r}: option {name} must be > 0, got {v!r}")
        return x

    def fraction(self, name: str) -> float:
        """Option ``name`` as a number in (0, 1]."""
        x = self.positive(name)
        if x > 1:
            raise ConfigError(f"policy {self.name!r}: option {name} must be in (0, 1], got {x}")
        return x


class Ranked(Tunable):
    """Order = ``rank`` then FCFS. Subclasses override ``rank`` only."""

    def rank(self, req: Request, now: float) -> tuple:
        return ()

    def key(self, req: Request, now: float) -> tuple:
        return (*self.rank(req, now), req.arrival, req.id)


def _overrides(part: Policy, hook: str) -> bool:
    return getattr(type(part), hook) is not getattr(Policy, hook)


class Composite(Policy):
    """``a+b+..``: see the module docstring for the rule."""

    def __init__(self, spec: str, parts: list[Policy]) -> None:
        self.name = spec  # instance attribute: reports show the composition
        self.parts = parts
        self.static_key = all(p.static_key for p in parts)
        self.fast_forward_safe = all(p.fast_forward_safe for p in parts)
        self.order_running = any(p.order_running for p in parts)
        self.skip_blocked = any(p.skip_blocked for p in parts)
        self.interruptible_prefill = any(p.interruptible_prefill for p in parts)
        merged: dict[str, Any] = {}
        for p in parts:
            for k, v in p.scheduler_defaults.items():
                merged.setdefault(k, v)
        self.scheduler_defaults = merged
        self._ranks = [p.rank if isinstance(p, Ranked) else p.key for p in parts]
        self._first = {h: next((p for p in parts if _overrides(p, h)), None)
                       for h in ("preempt_for", "victim", "retain", "prefill_layers",
                                 "reclaim_key")}
        keeper = self._first["retain"]  # whose pins: that part says whether they yield
        self.pins_yield_to_waiting = keeper.pins_yield_to_waiting if keeper else True
        for i, p in enumerate(parts):
            if hasattr(p, "order_key"):  # parts that compare keys (preemptive): composed order
                p.order_key = self.key
            if hasattr(p, "tiebreak"):  # parts that order within a class (vtc): later parts
                p.tiebreak = self._tiebreak(self._ranks[i + 1:])
                p.tiebreak_varies = not all(q.static_key for q in parts[i + 1:])

    @staticmethod
    def _tiebreak(later: list) -> Callable[[Request, float], tuple]:
        def key(req: Request, now: float) -> tuple:
            out: tuple = ()
            for rank in later:
                out += rank(req, now)
            return (*out, req.arrival, req.id)
        return key

    def key(self, req: Request, now: float) -> tuple:
        out: tuple = ()
        for rank in self._ranks:
            out += rank(req, now)
        return (*out, req.arrival, req.id)

    def admit(self, req: Request, view: View) -> bool:
        return all(p.admit(req, view) for p in self.parts)

    def preempt_for(self, req: Request, view: View) -> list[Request]:
        p = self._first["preempt_for"]
        return p.preempt_for(req, view) if p else []

    def victim(self, running: list[Request], view: View) -> Request:
        p = self._first["victim"]
        return p.victim(running, view) if p else Policy.victim(self, running, view)

    def retain(self, req: Request, view: View) -> float | None:
        p = self._first["retain"]
        return p.retain(req, view) if p else None

    def reclaim_key(self, pin, view: View) -> tuple:
        p = self._first["reclaim_key"]
        return p.reclaim_key(pin, view) if p else Policy.reclaim_key(self, pin, view)

    def prefill_layers(self, req: Request, view: View) -> int | None:
        p = self._first["prefill_layers"]
        return p.prefill_layers(req, view) if p else None

    def next_wakeup(self, view: View) -> float | None:
        times = [t for t in (p.next_wakeup(view) for p in self.parts) if t is not None]
        return min(times) if times else None

    def interrupt_for(self, req: Request, view: View) -> bool:
        return any(p.interrupt_for(req, view) for p in self.parts if p.interruptible_prefill)

    def on_arrival(self, req: Request, view: View) -> None:
        for p in self.parts:
            p.on_arrival(req, view)

    def on_admit(self, req: Request, view: View) -> None:
        for p in self.parts:
            p.on_admit(req, view)

    def on_step(self, served: list[tuple[Request, int]], view: View) -> None:
        for p in self.parts:
            p.on_step(served, view)

    def on_decode_run(self, reqs: list[Request], k: int, view: View) -> None:
        for p in self.parts:
            p.on_decode_run(reqs, k, view)

    def on_finish(self, req: Request, view: View) -> None:
        for p in self.parts:
            p.on_finish(req, view)


def compose(spec: str, **options: Any) -> Policy:
    """Build ``a+b+..`` and route each option to the parts that declare it."""
    names = [n.strip() for n in spec.split("+")]
    if any(not n for n in names):
        raise ConfigError(f"bad policy composition {spec!r}: expected NAME+NAME[+NAME]")
    if len(set(names)) != len(names):
        raise ConfigError(f"policy composition {spec!r} names a policy twice")
    classes = [get_policy_class(n) for n in names]
    declared = {n: set(getattr(c, "defaults", {})) for n, c in zip(names, classes)}
    valid = set().union(*declared.values())
    bad = sorted(set(options) - valid)
    if bad:
        raise ConfigError(f"policy {spec!r}: unknown option(s) {', '.join(bad)}; valid: "
                          f"{', '.join(sorted(valid)) or 'none'}")
    parts = [c(**{k: v for k, v in options.items() if k in declared[n]})
             for n, c in zip(names, classes)]
    return Composite(spec, parts)
