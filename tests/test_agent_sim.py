"""Agent-aware retention end to end on hand-built programs: a pinned turn-2 prefix is hit after a
short tool call and missed after the TTL, no pin outlives its program, pins give way under
memory pressure without deadlock, and fast-forward never changes a result."""

from __future__ import annotations

import heapq

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from conftest import LinearPerf, make_request
from sluice.core.content import Content
from sluice.core.request import Request, RequestState
from sluice.metrics.programs import program_summary
from sluice.metrics.records import RequestRecord
from sluice.metrics.summary import summarize
from sluice.sim.loop import SimLoop
from sluice.sim.runner import SimConfig, build_engine
from sluice.workload.agent_presets import AgentPreset
from sluice.workload.agents import AgentWorkload
from sluice.workload.synth import Poisson

AGENT_POLICIES = ["continuum", "thunderagent", "kvflow", "program_fcfs", "saga"]


class Scripted:
    """Programs with fixed turns (tests): turn k+1 arrives ``tools[k]`` s after turn k ends and
    its prompt is turn k's whole context plus ``extra`` new tokens. Plain requests ride along."""

    name = "scripted"

    def __init__(self, programs: list[dict], plain: list[Request] = ()) -> None:
        self.programs = {p["pid"]: p for p in programs}
        self.plain = list(plain)

    def requests(self):
        firsts = [self._turn(p, 0, p["start"], Content(segments=[(7_000_000 + p["pid"],
                                                                   p["prompt"])]))
                  for p in self.programs.values()]
        return iter(sorted(firsts + self.plain, key=lambda r: (r.arrival, r.id)))

    def on_request_end(self, req: Request, now: float) -> list[Request]:
        p = self.programs.get(req.program) if req.program is not None else None
        if p is None or req.last_turn or req.state != RequestState.FINISHED:
            return []
        c = req.content.copy()
        c.append_virtual(8_000_000 + req.id, p["extra"])
        return [self._turn(p, req.turn + 1, now + p["tools"][req.turn], c)]

    @staticmethod
    def _turn(p: dict, k: int, t: float, content: Content) -> Request:
        n = len(p["outputs"])
        return Request(p["pid"] * 1024 + k, t, content, p["outputs"][k], program=p["pid"],
                       turn=k, last_turn=k + 1 >= n, tool=None if k + 1 >= n else "t",
                       user=p.get("user", "default"), true_output=p["outputs"][k])


def run(policy: str, workload, blocks: int, *, ff: bool = True, opts: dict | None = None,
        check_every_event: bool = False):
    cfg = SimConfig(policy=policy, policy_options=opts or {}, perf=LinearPerf(blocks=blocks),
                    num_gpu_blocks=blocks, fast_forward=ff)
    engine = build_engine(cfg)
    records: list[RequestRecord] = []
    live: list[Request] = []

    def on_end(r: Request) -> None:
        records.append(RequestRecord.of(r))
        if check_every_event:  # invariants at every request end
            sched = engine.scheduler
            for pin in engine.kv.pins.values():
                assert pin.owner in sched.programs, "a pin outlived its program"
            engine.kv.check(sched.running + [w for w in sched.waiting if w.blocks])

    loop = SimLoop(engine, workload, fast_forward=ff, on_request_end=on_end)
    loop.run()
    engine.kv.check(live)
    records.sort(key=lambda r: r.id)
    return engine, records


def two_turn(tool: float, noise_at: float = 0.3):
    """One program (1000-token prompt, 2 turns) and, during its tool call, two unrelated
    2000-token requests: the second must evict cached blocks (plain free ones run out)."""
    prog = {"pid": 1, "start": 0.0, "prompt": 1000, "outputs": [20, 5], "tools": [tool],
            "extra": 40}
    noise = [make_request(10, noise_at, 2000, 2), make_request(11, noise_at + 0.3, 2000, 2)]
    return Scripted([prog], noise)


def turn2(records):
    return next(r for r in records if r.program == 1 and r.turn == 1)


def reusable(records):
    t0 = next(r for r in records if r.program == 1 and r.turn == 0)
    return (t0.prompt_tokens + t0.output_tokens - 1) // 16 * 16


def test_lru_loses_the_context_during_the_tool_call():
    """The scenario is real: without a pin, vLLM's LRU evicts the program's context."""
    _, recs = run("vllm", two_turn(1.0), blocks=200)
    assert turn2(recs).cached_tokens < reusable(recs) // 2


@pytest.mark.parametrize("opts", [{"mode": "fixed", "ttl": 5.0, "prior_mean": 0.5},
                                  # a pin of 1/3 of this tiny cache pays only if prefill is slow
                                  {"mode": "utility", "prior_mean": 0.5,
                                   "prefill_s_per_token": 1e-3}])
def test_pinned_turn2_prefix_hit_after_short_tool(opts):
    engine, recs = run("continuum", two_turn(1.0), blocks=200, opts=opts)
    assert turn2(recs).cached_tokens == reusable(recs)
    assert engine.policy.retention.returns_in_ttl == 1
    assert engine.kv.stats.pins_created == 1 and not engine.kv.pins


def test_miss_after_the_ttl():
    engine, recs = run("continuum", two_turn(10.0, noise_at=4.0), blocks=200,
                       opts={"mode": "fixed", "ttl": 2.0, "prior_mean": 0.5})
    assert turn2(recs).cached_tokens < reusable(recs) // 2
    assert engine.policy.retention.returns_late == 1
    assert engine.kv.stats.pins_expired == 1


@pytest.mark.parametrize("yield_to_waiting", [True, False])
def test_waiting_request_reclaims_a_pin_only_if_the_policy_lets_it(yield_to_waiting):
    """While another request runs, a plain request arriving during the tool call fits only if
    the program's pin goes: with yield_to_waiting it reclaims the pin (turn 2 misses); without,
    it waits for the program (turn 2 hits) and still runs afterwards."""
    prog = {"pid": 1, "start": 0.0, "prompt": 1000, "outputs": [20, 5], "tools": [2.0],
            "extra": 40}
    busy = make_request(11, 0.1, 100, 600)  # decodes past the tool call: the GPU is not idle
    w = Scripted([prog], [busy, make_request(10, 0.5, 2200, 2)])
    engine, recs = run("continuum", w, blocks=200, check_every_event=True,
                       opts={"mode": "fixed", "ttl": 5.0, "prior_mean": 0.5,
                             "yield_to_waiting": yield_to_waiting})
    assert len(recs) == 4 and all(r.completed for r in recs)
    plain = next(r for r in recs if r.id == 10)
    if yield_to_waiting:
        assert engine.kv.stats.pins_reclaimed == 1
        assert plain.first_scheduled < 1.0  # admitted on arrival
        assert turn2(recs).cached_tokens < reusable(recs)  # the plain request evicted part
    else:
        assert engine.kv.stats.pins_reclaimed == 0
        assert turn2(recs).cached_tokens == reusable(recs)
        assert plain.first_scheduled >= turn2(recs).first_scheduled


def test_pins_yield_when_nothing_runs():
    """A pin kept from waiting requests still gives way when nothing runs: an idle GPU with
    work queued until an expiry (up to the TTL) is never the better bet."""
    prog = {"pid": 1, "start": 0.0, "prompt": 1000, "outputs": [20, 5], "tools": [30.0],
            "extra": 40}
    w = Scripted([prog], [make_request(10, 0.5, 3000, 2)])
    engine, recs = run("continuum", w, blocks=200, check_every_event=True,
                       opts={"mode": "fixed", "ttl": 100.0, "prior_mean": 5.0})
    plain = next(r for r in recs if r.id == 10)
    assert engine.kv.stats.pins_reclaimed == 1
    assert plain.first_scheduled < 1.0


def test_fixed_mode_declines_when_the_tool_is_slower_than_the_ttl():
    engine, recs = run("continuum", two_turn(1.0), blocks=200,
                       opts={"mode": "fixed", "ttl": 2.0, "prior_mean": 30.0})
    assert engine.kv.stats.pins_created == 0 and engine.policy.retention.declined == 1


@pytest.mark.parametrize("policy", ["thunderagent", "kvflow", "saga"])
def test_other_retaining_policies_keep_the_context(policy):
    _, recs = run(policy, two_turn(1.0), blocks=200, opts={"prior_mean": 0.5})
    assert turn2(recs).cached_tokens == reusable(recs)


def _many(n: int, seed: int, tool: float = 0.5, turns: int = 4, prompt: int = 600):
    import numpy as np

    rng = np.random.default_rng(seed)
    return [{"pid": i, "start": float(rng.uniform(0, 2)), "prompt": int(rng.integers(100, prompt)),
             "outputs": [int(x) for x in rng.integers(1, 40, turns)],
             "tools": [float(x) for x in rng.exponential(tool, turns)], "extra": 30,
             "user": f"u{i % 3}"} for i in range(n)]


@pytest.mark.parametrize("policy", AGENT_POLICIES)
def test_pins_reclaimed_under_pressure_without_deadlock(policy):
    """Pins that would hold far more than the cache (long TTL/hold) must give way: every
    program finishes, pins were reclaimed, no pin outlives its program, no block leaks."""
    opts = {"continuum": {"mode": "fixed", "ttl": 1000.0, "prior_mean": 0.5},
            "thunderagent": {"hold": 1000.0, "target": 1.5},
            "kvflow": {"budget": 1.0, "quantile": 0.99},
            "saga": {"ttl": 1000.0}}.get(policy, {})
    w = Scripted(_many(24, 0, tool=2.0, prompt=900))
    engine, recs = run(policy, w, blocks=160, opts=opts, check_every_event=True)
    s = program_summary(recs, engine.kv.stats)
    assert s["programs_completed"] == 24
    if policy not in ("program_fcfs",):
        assert engine.kv.stats.pins_created > 0
        if policy != "thunderagent":  # its gate may keep the pins within the cache
            assert engine.kv.stats.pins_reclaimed > 0
    assert not engine.kv.pins


@pytest.mark.parametrize("policy", ["continuum", "thunderagent", "kvflow", "saga"])
def test_no_pin_outlives_its_program(policy):
    """Plenty of memory and TTLs far longer than the run: only the programs' ends release the
    pins (checked at every request end, and nothing is left at the end)."""
    opts = {"continuum": {"mode": "fixed", "ttl": 1e6, "prior_mean": 0.5},
            "thunderagent": {"hold": 1e6}, "kvflow": {"budget": 1.0, "quantile": 0.99},
            "saga": {"ttl": 1e6, "prior_mean": 0.5}}[policy]
    engine, recs = run(policy, Scripted(_many(8, 1)), blocks=4000, opts=opts,
                       check_every_event=True)
    st = engine.kv.stats
    assert st.pins_created > 0 and st.pins_reclaimed == 0 and st.pins_released > 0
    assert not engine.kv.pins


def _preset(turns: int, tool: float, out: int, task: int) -> AgentPreset:
    return AgentPreset("tiny", "test", system_len=64, system_variants=2, task_mean=task,
                       task_cv=1.0, turns_mean=turns, turns_cv=0.5, turns_min=1, turns_max=8,
                       output_mean=out, output_cv=1.0, tool_tokens_mean=50, tool_tokens_cv=1.0,
                       tool_time_mean=tool, tool_time_cv=1.5, tools=("a", "b"), max_piece=1000)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(policy=st.sampled_from(AGENT_POLICIES), seed=st.integers(0, 10_000),
       turns=st.integers(1, 6), tool=st.floats(0.05, 5.0), out=st.integers(1, 60),
       task=st.integers(20, 800), blocks=st.integers(90, 400), rate=st.floats(0.5, 8.0))
def test_property_no_leaks_every_program_finishes(policy, seed, turns, tool, out, task,
                                                  blocks, rate):
    # programs are cut before a context that could never fit the cache (that is a rejection)
    w = AgentWorkload(_preset(turns, tool, out, task), programs=12, arrivals=Poisson(rate),
                      seed=seed, max_model_len=blocks * 16 - 64)
    engine, recs = run(policy, w, blocks=blocks, check_every_event=True)
    assert w.ended["completed"] == 12 and w.ended["failed"] == 0
    assert program_summary(recs)["programs_completed"] == 12
    assert not engine.kv.pins


def _summary(engine, recs):
    s = summarize(recs, engine.scheduler.all_itls())
    s.update(program_summary(recs, engine.kv.stats))
    s["retention"] = engine.policy.retention.as_dict()
    return s


@pytest.mark.parametrize("policy", AGENT_POLICIES)
def test_fast_forward_on_off_identical(policy):
    def w():
        return AgentWorkload(_preset(5, 0.5, 80, 400), programs=16, arrivals=Poisson(3.0),
                             seed=7, max_model_len=4096)
    on = run(policy, w(), blocks=300, ff=True)
    off = run(policy, w(), blocks=300, ff=False)
    assert _summary(*on) == _summary(*off)
    assert [r.finish for r in on[1]] == [r.finish for r in off[1]]
