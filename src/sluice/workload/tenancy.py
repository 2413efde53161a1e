"""Tenants, SLO classes and priorities assigned to requests by rule.

Why rules instead of trace columns: no public trace carries tenants or SLOs, yet fairness
(VTC, UWFQ) and SLO policies (EDF, JITServe) need them. Tenants follow a Zipf law by default
because per-client traffic is heavy-tailed (ServeGen: a few clients dominate the volume); SLO
classes are first-match rules on request features so a run states its assumptions on the
command line. All random choices use an explicit generator.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from sluice.core.request import SLO, Request
from sluice.errors import ConfigError
from sluice.workload.trace_readers import TraceRecord


class TenantAssigner:
    """``zipf:N[:S]`` | ``uniform:N`` | ``round-robin:N`` | ``session`` | ``N`` (uniform).

    ``session`` uses the trace's session/user column (BurstGPT Session ID or Model, sluice
    JSONL ``user``), so each conversation or API client is its own tenant.
    """

    def __init__(self, spec: str) -> None:
        self.spec = spec
        parts = spec.lower().split(":")
        self.kind = "uniform" if parts[0].isdigit() else parts[0]
        try:
            nums = [float(p) for p in (parts if parts[0].isdigit() else parts[1:])]
        except ValueError:
            raise ConfigError(f"bad --tenants {spec!r}") from None
        if self.kind == "session":
            self.n = 0
            return
        if self.kind not in ("zipf", "uniform", "round-robin") or not nums or nums[0] < 1:
            raise ConfigError(f"bad --tenants {spec!r}; expected zipf:N[:S], uniform:N, "
                              "round-robin:N, session or N")
        self.n = int(nums[0])
        s = nums[1] if len(nums) > 1 else 1.0
        ranks = np.arange(1, self.n + 1, dtype=float)
        w = ranks ** -s if self.kind == "zipf" else np.ones(self.n)
        self.cdf = np.cumsum(w / w.sum())
        self.names = [f"t{i}" for i in range(self.n)]

    def tenant(self, index: int, rec: TraceRecord | None, rng: np.random.Generator) -> str:
        if self.kind == "session":
            key = (rec.session or rec.user) if rec is not None else None
            return key or "default"
        if self.kind == "round-robin":
            return self.names[index % self.n]
        i = int(np.searchsorted(self.cdf, rng.random(), side="right"))
        return self.names[min(i, self.n - 1)]


_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "=": operator.eq}


def parse_seconds(text: str) -> float:
    """``500ms`` | ``0.5s`` | ``0.5`` (seconds)."""
    t = text.strip().lower()
    if t.endswith("ms"):
        return float(t[:-2]) / 1000.0
    return float(t[:-1] if t.endswith("s") else t)


@dataclass(slots=True)
class SLORule:
    """One SLO class: ``NAME,ttft=..,tpot=..,deadline=..,priority=P,when=COND,share=F``.

    ``when`` compares ``input``/``output`` (tokens) or ``user`` with <, <=, >, >=, =;
    ``share`` picks that random fraction of the requests that reach this rule.
    """

    name: str
    slo: SLO | None = None
    priority: int | None = None
    cond: tuple[str, str, str] | None = None
    share: float = 1.0

    def matches(self, req: Request, rng: np.random.Generator) -> bool:
        if self.cond is not None:
            what, op, value = self.cond
            if what == "user":
                if not _OPS[op](req.user, value):  # type: ignore[arg-type]
                    return False
            else:
                x = req.prompt_len if what == "input" else req.max_tokens
                if not _OPS[op](x, float(value)):
                    return False
        return self.share >= 1.0 or rng.random() < self.share


def parse_slo_rule(spec: str, default_name: str = "default") -> SLORule:
    fields = [f.strip() for f in spec.split(",") if f.strip()]
    name = default_name
    if fields and "=" not in fields[0]:
        name = fields.pop(0)
    rule = SLORule(name)
    slo_kw: dict[str, float] = {}
    try:
        for f in fields:
            key, _, value = f.partition("=")
            if key in ("ttft", "tpot", "deadline"):
                slo_kw[key] = parse_seconds(value)
            elif key == "priority":
                rule.priority = int(value)
            elif key == "share":
                rule.share = float(value)
            elif key == "when":
                rule.cond = _parse_cond(value)
            else:
                raise ConfigError(f"unknown SLO field {key!r} in {spec!r}; valid: ttft, tpot, "
                                  "deadline, priority, when, share")
        rule.slo = SLO(**slo_kw) if slo_kw else None
    except ValueError as e:
        raise ConfigError(f"bad SLO spec {spec!r}: {e}") from None
    return rule


def _parse_cond(text: str) -> tuple[str, str, str]:
    # Named `when=input>4096`: the first '=' split off the key, so text is 'input>4096'.
    for op in ("<=", ">=", "<", ">", "="):
        what, sep, value = text.partition(op)
        if sep and what in ("input", "output", "user") and value:
            if what != "user":
                float(value)
            return what, op, value
    raise ConfigError(f"bad SLO condition {text!r}; expected input|output|user OP VALUE")


@dataclass(slots=True)
class Decorator:
    """Applies tenants, then the first matching SLO class, then the default SLO."""

    tenants: TenantAssigner | None = None
    rules: list[SLORule] = field(default_factory=list)
    default: SLORule | None = None

    def apply(self, req: Request, index: int, rec: TraceRecord | None,
              rng: np.random.Generator) -> None:
        if self.tenants is not None:
            req.user = self.tenants.tenant(index, rec, rng)
        for rule in self.rules:
            if rule.matches(req, rng):
                _set(req, rule)
                return
        if self.default is not None:
            _set(req, self.default)

    @property
    def active(self) -> bool:
        return self.tenants is not None or bool(self.rules) or self.default is not None


def _set(req: Request, rule: SLORule) -> None:
    req.slo_class = rule.name
    if rule.slo is not None:
        req.slo = rule.slo
    if rule.priority is not None:
        req.priority = rule.priority
