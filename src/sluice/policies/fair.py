"""Fairness between tenants: VTC and UWFQ.

* ``vtc`` - Virtual Token Counter (Sheng et al., "Fairness in Serving Large Language Models",
  OSDI'24). Each tenant has a counter of the service it received, ``w_in`` per input token and
  ``w_out`` per output token (paper defaults 1 and 2), divided by the tenant's weight. The next
  request admitted comes from the backlogged tenant with the smallest counter. When a tenant
  *becomes* backlogged its counter is lifted to the smallest counter among backlogged tenants,
  so idling does not bank credit. The paper proves that two continuously backlogged tenants'
  service differs by at most ``2 * (w_in * L_in + w_out * L_out)``.
* ``uwfq`` - User Weighted Fair Queuing (the Spark UWFQ paper: per-user fair share, each user's
  share split over its jobs, run by earliest *virtual finish time*). A request's finish tag is
  ``F = max(V, F_last[user]) + cost / w_user`` with ``cost = w_in * input + w_out * predicted
  output`` and ``V`` the start tag of the last request to enter service (self-clocked, as in
  start-time fair queuing). A user who sends ten times more requests only gets its tags spread
  ten times further apart, i.e. no more than its weighted share.
"""

from __future__ import annotations

from typing import Any, Callable

from sluice.core.request import Request
from sluice.errors import ConfigError
from sluice.policies.base import View, register
from sluice.policies.compose import Ranked
from sluice.policies.predictors import PREDICTOR_OPTIONS, predictor_from


def parse_weights(spec: Any, policy: str) -> dict[str, float]:
    """``"t0:2,t1:1"`` or a dict -> {tenant: weight > 0}."""
    if not spec:
        return {}
    items = spec.items() if isinstance(spec, dict) else (
        part.split(":", 1) for part in str(spec).split(",") if part.strip())
    out: dict[str, float] = {}
    for item in items:
        try:
            user, w = item
            w = float(w)
        except (TypeError, ValueError):
            raise ConfigError(f"policy {policy!r}: weights {spec!r}: expected "
                              "TENANT:WEIGHT[,TENANT:WEIGHT]") from None
        if not w > 0:
            raise ConfigError(f"policy {policy!r}: weight of tenant {str(user).strip()!r} "
                              f"must be > 0, got {w}")
        out[str(user).strip()] = w
    return out


class _TenantWeights(Ranked):
    """Shared option handling: token weights and per-tenant weights."""

    def _init_weights(self) -> None:
        self.w_in = self.positive("w_in")
        self.w_out = self.positive("w_out")
        self.weights = parse_weights(self.opts["weights"], self.name)

    def weight(self, req: Request) -> float:
        """The tenant's weight: the ``weights`` option, else the request's own ``weight``."""
        return self.weights.get(req.user, req.weight)


@register("vtc")
class VTC(_TenantWeights):
    static_key = False  # counters move every step
    defaults = {"w_in": 1.0, "w_out": 2.0, "weights": ""}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._init_weights()
        # counter = base + (w_in*tokens_in + w_out*tokens_out) / weight. Tokens are integers,
        # so charging per step or per fast-forwarded run gives bit-identical counters.
        self._base: dict[str, float] = {}
        self._tok: dict[str, list[int]] = {}
        self._w: dict[str, float] = {}
        self._charged: dict[int, list[int]] = {}  # request id -> [input, output] charged
        # Requests never scheduled, per tenant: the paper charges a request's input when it is
        # admitted, *between* admissions of one step; we get the same interleaving by ranking
        # the k-th queued request of a tenant at its counter plus the inputs queued before it.
        self._pending: dict[str, dict[int, Request]] = {}
        self._version = 0
        self._offsets: dict[int, float] = {}
        self._offsets_stamp: tuple[int, float] | None = None
        # Order within a tenant; a composition (vtc+edf) sets it to the later parts' order.
        self.tiebreak: Callable[[Request, float], tuple] = lambda r, now: (r.arrival, r.id)
        self.tiebreak_varies = False  # does the tiebreak depend on time? (re-sort each step)

    def counter(self, user: str) -> float:
        t = self._tok.get(user)
        if t is None:
            return self._base.get(user, 0.0)
        return self._base[user] + (self.w_in * t[0] + self.w_out * t[1]) / self._w[user]

    def _queued_input(self, req: Request, now: float) -> float:
        """Weighted input of the tenant's never-scheduled requests queued before ``req``."""
        stamp = (self._version, now if self.tiebreak_varies else 0.0)
        if self._offsets_stamp != stamp:
            self._offsets = {}
            tiebreak = self.tiebreak
            for user, reqs in self._pending.items():
                for rid in [rid for rid, r in reqs.items()
                            if r.first_scheduled >= 0 or r.is_finished]:
                    del reqs[rid]  # admitted in an interrupted step, or aborted
                acc = 0.0
                scale = self.w_in / self._w[user]
                for r in sorted(reqs.values(), key=lambda r: tiebreak(r, now)):
                    self._offsets[r.id] = acc
                    acc += scale * r.prompt_len
            self._offsets_stamp = stamp
        return self._offsets.get(req.id, 0.0)

    def rank(self, req: Request, now: float) -> tuple:
        return (self.counter(req.user) + self._queued_input(req, now),)

    def on_arrival(self, req: Request, view: View) -> None:
        u = req.user
        if u not in self._tok:
            self._base[u], self._tok[u] = 0.0, [0, 0]
        self._w[u] = self.weight(req)
        backlogged = {r.user for r in view.waiting}
        self._pending.setdefault(u, {})[req.id] = req
        self._version += 1
        if u in backlogged:
            return
        # Lift rule. With nobody queued the paper uses the counter of the last tenant to leave
        # the queue; we use the smallest counter among tenants now running (see docs).
        others = backlogged or {r.user for r in view.running if r.user != u}
        if others:
            floor = min(self.counter(v) for v in others)
            if self.counter(u) < floor:
                self._base[u], self._tok[u] = floor, [0, 0]

    def _settle(self, req: Request) -> None:
        c = self._charged.get(req.id)
        if c is None:
            c = self._charged[req.id] = [0, 0]
        t = self._tok[req.user]
        if not c[0] and req.first_scheduled >= 0:  # input charged once, at admission
            t[0] += req.prompt_len
            c[0] = req.prompt_len
            if self._pending[req.user].pop(req.id, None) is not None:
                self._version += 1
        if req.num_output > c[1]:
            t[1] += req.num_output - c[1]
            c[1] = req.num_output

    def on_step(self, served: list[tuple[Request, int]], view: View) -> None:
        for req, _n in served:
            if not req.is_finished:
                self._settle(req)

    def on_decode_run(self, reqs: list[Request], k: int, view: View) -> None:
        for req in reqs:
            if not req.is_finished:
                self._settle(req)

    def on_finish(self, req: Request, view: View) -> None:
        self._settle(req)
        del self._charged[req.id]


@register("uwfq")
class UWFQ(_TenantWeights):
    static_key = True  # a tag is fixed at arrival
    defaults = {"w_in": 1.0, "w_out": 2.0, "weights": "", **PREDICTOR_OPTIONS,
                "predictor": "none"}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._init_weights()
        self.predictor = predictor_from(self.opts)
        self._v = 0.0  # system virtual time: start tag of the last request to enter service
        self._last_finish: dict[str, float] = {}
        self._tag: dict[int, tuple[float, float]] = {}  # id -> (start, finish)

    def rank(self, req: Request, now: float) -> tuple:
        return (self._tag[req.id][1],) if req.id in self._tag else (self._v,)

    def on_arrival(self, req: Request, view: View) -> None:
        cost = self.w_in * req.prompt_len + self.w_out * self.predictor.remaining(req)
        start = max(self._v, self._last_finish.get(req.user, 0.0))
        finish = start + cost / self.weight(req)
        self._last_finish[req.user] = finish
        self._tag[req.id] = (start, finish)

    def on_step(self, served: list[tuple[Request, int]], view: View) -> None:
        for req, _n in served:
            tag = self._tag.get(req.id)
            if tag is not None and tag[0] > self._v:
                self._v = tag[0]

    def on_finish(self, req: Request, view: View) -> None:
        self.predictor.observe(req)
        self._tag.pop(req.id, None)
