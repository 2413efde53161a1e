"""Closed-loop agent programs: each turn's prompt is the previous turn's full context (prompt +
generated output) plus the tool's output, and it arrives only after the tool has run.

Why plans are drawn per program up front: a program's turn count, lengths and tool times come
from a generator seeded by ``(seed, program id)``, so every policy in ``sluice compare`` sees the
same programs whatever order completions happen in; only *when* turns arrive depends on the
policy, as in reality. Request ids are ``program * TURN_STRIDE + turn`` for the same reason.

The simulator appends each request's output to ``req.content`` (segment ``req.output_key``)
before :meth:`AgentWorkload.on_request_end`; the next turn copies that content, so its prompt
starts with the whole previous context and prefix caching can serve it (Continuum, KVFlow,
ThunderAgent all exploit exactly this reuse). A turn that did not finish ends its program.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from sluice.core.content import Content
from sluice.core.request import Request, RequestState
from sluice.errors import ConfigError
from sluice.workload.agent_presets import PRESETS, AgentPreset
from sluice.workload.keys import MINT_BASE
from sluice.workload.synth import ArrivalProcess
from sluice.workload.tenancy import Decorator

TURN_STRIDE = 1024  # max turns per program; request id = program * TURN_STRIDE + turn
SYSTEM_BASE = 1 << 42  # keys of shared system prompts (one per preset variant)


@dataclass(slots=True)
class ProgramPlan:
    """Everything random about one program, drawn when it starts."""

    pid: int
    variant: int
    task: int
    outputs: list[int]
    tool_tokens: list[int]  # appended after turn k (k < n-1)
    user_tokens: list[int]  # next instruction after the tool output (chat: the user turn)
    tool_times: list[float]  # seconds between turn k's end and turn k+1's arrival
    tools: list[str]

    @property
    def turns(self) -> int:
        return len(self.outputs)


def _lognormal(rng: np.random.Generator, mean: float, cv: float, n: int) -> np.ndarray:
    s2 = math.log1p(cv * cv)
    return rng.lognormal(math.log(mean) - s2 / 2, math.sqrt(s2), n)


def draw_plan(preset: AgentPreset, pid: int, seed: int, max_model_len: int | None) -> ProgramPlan:
    """Sample a program; cut it before the turn whose context would exceed the model."""
    rng = np.random.default_rng([seed, 10, pid])
    p = preset
    n = int(np.clip(round(_lognormal(rng, p.turns_mean, p.turns_cv, 1)[0]), p.turns_min,
                    min(p.turns_max, TURN_STRIDE)))
    ints = (lambda m, cv, k, hi: np.clip(np.rint(_lognormal(rng, m, cv, k)), 1, hi)
            .astype(np.int64).tolist())
    plan = ProgramPlan(
        pid=pid, variant=int(rng.integers(0, p.system_variants)),
        task=ints(p.task_mean, p.task_cv, 1, p.max_piece)[0],
        outputs=ints(p.output_mean, p.output_cv, n, p.max_output),
        tool_tokens=(ints(p.tool_tokens_mean, p.tool_tokens_cv, n, p.max_piece)
                     if p.tool_tokens_mean else [0] * n),
        user_tokens=ints(p.user_mean, p.user_cv, n, p.max_piece) if p.user_mean else [0] * n,
        tool_times=_lognormal(rng, p.tool_time_mean, p.tool_time_cv, n).tolist(),
        tools=[p.tools[i] for i in rng.integers(0, len(p.tools), n)])
    if max_model_len is not None:
        ctx = p.system_len + plan.task
        for k in range(n):
            if k > 0 and ctx + plan.outputs[k] > max_model_len:
                del plan.outputs[k:]
                break
            ctx += plan.outputs[k] + plan.tool_tokens[k] + plan.user_tokens[k]
    return plan


@dataclass(slots=True)
class AgentWorkload:
    """Agent programs started by an arrival process (open) or a fixed population (closed).

    ``programs`` is the total number of programs; with ``population`` P, P run at once and
    each finished program is replaced at its end time until ``programs`` have started.
    """

    preset: AgentPreset
    programs: int = 100
    arrivals: ArrivalProcess | None = None
    population: int | None = None
    seed: int = 0
    max_model_len: int | None = None
    decorator: Decorator = field(default_factory=Decorator)
    name: str = ""
    _active: dict[int, ProgramPlan] = field(default_factory=dict)
    _started: int = 0
    ended: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.name = self.name or self.preset.name
        if self.programs < 1:
            raise ConfigError(f"agent workload needs >= 1 program, got {self.programs}")
        if (self.arrivals is None) == (self.population is None):
            raise ConfigError("agent programs start by an arrival process (--rate) or a closed "
                              "population (--programs-concurrent), exactly one of them")
        if self.population is not None and self.population < 1:
            raise ConfigError(f"closed population must be >= 1, got {self.population}")

    # -- Workload protocol ---------------------------------------------------------------
    def requests(self) -> Iterator[Request]:
        """First turns of the programs that start open-loop (all of them, or the initial
        closed population, staggered over the first second so they do not move in lockstep)."""
        self._active.clear()
        self._started = 0
        self.ended = {"completed": 0, "failed": 0}
        if self.population is not None:
            rng = np.random.default_rng([self.seed, 11])
            k = min(self.population, self.programs)
            for t in np.sort(rng.uniform(0.0, 1.0, k)).tolist():
                yield self._start(t)
            return
        assert self.arrivals is not None
        times = self.arrivals.times(np.random.default_rng([self.seed, 2]))
        while self._started < self.programs:
            t = next(times, None)
            if t is None:
                return
            yield self._start(t)

    def on_request_end(self, req: Request, now: float) -> list[Request]:
        plan = self._active.get(req.program) if req.program is not None else None
        if plan is None:
            return []
        k = req.turn
        if req.state != RequestState.FINISHED or k + 1 >= plan.turns:
            del self._active[plan.pid]
            self.ended["completed" if req.state == RequestState.FINISHED else "failed"] += 1
            return self._replace(now)
        content = req.content.copy()
        key = MINT_BASE + (plan.pid * TURN_STRIDE + k) * 2
        content.append_virtual(key, plan.tool_tokens[k])
        content.append_virtual(key + 1, plan.user_tokens[k])
        return [self._turn(plan, k + 1, now + plan.tool_times[k], content)]

    # -- internals -----------------------------------------------------------------------
    def _replace(self, now: float) -> list[Request]:
        if self.population is None or self._started >= self.programs:
            return []
        return [self._start(now)]

    def _start(self, t: float) -> Request:
        pid = self._started
        self._started += 1
        plan = draw_plan(self.preset, pid, self.seed, self.max_model_len)
        self._active[pid] = plan
        segs = [(SYSTEM_BASE + plan.variant, self.preset.system_len),
                (MINT_BASE + (pid * TURN_STRIDE + TURN_STRIDE - 1) * 2, plan.task)]
        return self._turn(plan, 0, t, Content(segments=segs))

    def _turn(self, plan: ProgramPlan, k: int, t: float, content: Content) -> Request:
        out = plan.outputs[k]
        req = Request(plan.pid * TURN_STRIDE + k, t, content, out, program=plan.pid, turn=k,
                      last_turn=k + 1 >= plan.turns,
                      tool=None if k + 1 >= plan.turns else plan.tools[k], true_output=out)
        if self.decorator.active:
            rng = np.random.default_rng([self.seed, 12, plan.pid])  # one tenant per program
            self.decorator.apply(req, plan.pid, None, rng)
        return req


def agent_workload(name: str, **kw) -> AgentWorkload:
    if name not in PRESETS:
        raise ConfigError(f"unknown agent preset {name!r}; valid: {', '.join(sorted(PRESETS))}")
    return AgentWorkload(PRESETS[name], **kw)
