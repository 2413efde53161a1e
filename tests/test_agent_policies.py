"""Agent policies' decisions in isolation: tool-duration beliefs, Continuum's TTL choice,
program-level order, ThunderAgent's gate and pause, SAGA's tenant shares, program metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import LinearPerf, make_request
from sluice.core.content import Content
from sluice.core.programs import ProgramTable
from sluice.core.request import Request, RequestState
from sluice.errors import ConfigError
from sluice.metrics.programs import program_summary
from sluice.metrics.records import RequestRecord
from sluice.policies.agent import ToolHistory
from sluice.policies.base import View, make_policy
from sluice.sim.loop import SimLoop
from sluice.sim.runner import SimConfig, build_engine
from sluice.workload.base import ListWorkload


def view(now=0.0, free=900, total=1000, waiting=(), programs=None) -> View:
    return View(now, free, total, 16, [], list(waiting), 0, programs or ProgramTable())


def turn(pid: int, k: int, t: float, prompt: int, *, last=False, tool="t", user="default",
         out=10) -> Request:
    return Request(pid * 1024 + k, t, Content(segments=[(5_000_000 + pid, prompt)]), out,
                   program=pid, turn=k, last_turn=last, tool=None if last else tool, user=user,
                   true_output=out)


# -- tool history ---------------------------------------------------------------------------
def test_cold_start_is_the_exponential_prior():
    h = ToolHistory(prior_mean=4.0)
    assert h.cdf("bash", np.array([4.0]))[0] == pytest.approx(1 - math.exp(-1))
    assert h.mean("bash") == pytest.approx(4.0)
    assert h.expected_min("bash", np.array([1e9]))[0] == pytest.approx(4.0)


def test_history_dominates_the_prior_and_is_per_tool():
    h = ToolHistory(prior_mean=4.0, prior_weight=2.0)
    for _ in range(98):
        h.observe("fast", 0.5)
    assert h.cdf("fast", np.array([0.6]))[0] > 0.98
    assert h.mean("fast") == pytest.approx((2 * 0.5 + 98 * 0.5) / 100)  # prior = pooled mean
    assert h.quantile("fast", 0.9) == pytest.approx(0.5, abs=1e-6)
    h.observe("slow", 100.0)
    assert h.mean("slow") > 10 * h.mean("fast")


# -- continuum ------------------------------------------------------------------------------
def _finished(prompt=3200, last=False, tool="t") -> Request:
    r = turn(1, 0, 0.0, prompt, last=last, tool=tool)
    r.num_computed = prompt
    return r


def test_utility_pins_on_an_idle_cache_and_declines_when_full_and_slow():
    p = make_policy("continuum", prior_mean=5.0)
    assert p.retain(_finished(), view(free=990)) > 5.0
    slow = make_policy("continuum", prior_mean=600.0, prefill_s_per_token=1e-6)
    assert slow.retain(_finished(), view(free=0, waiting=[object()])) is None


def test_utility_ttl_shrinks_with_pressure():
    p = make_policy("continuum", prior_mean=5.0)
    for _ in range(50):
        p.history.observe("t", float(np.random.default_rng(1).exponential(5.0)))
    idle = p.utility_ttl(_finished(), view(free=999))
    busy = p.utility_ttl(_finished(prompt=64_000), view(free=0, total=4000, waiting=[object()]))
    assert idle is not None and (busy is None or busy < idle)


def test_no_pin_for_a_last_turn_or_a_lone_call():
    p = make_policy("continuum")
    assert p.retain(_finished(last=True), view()) is None
    lone = make_request(1, 0.0, 100, 5)
    lone.num_computed = 100
    assert p.retain(lone, view()) is None


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError):
        make_policy("continuum", mode="forever")
    with pytest.raises(ConfigError):
        make_policy("kvflow", budget=2.0)
    with pytest.raises(ConfigError):
        make_policy("thunderagent", nonsense=1)


# -- program-level order ----------------------------------------------------------------------
def _order_run(policy: str) -> dict[int, float]:
    """max_num_seqs=1: a long plain request holds the GPU while program B's first turn (4.99)
    and program A's second turn (5.0; A started at 0) queue; who goes first?"""
    class W(ListWorkload):
        def on_request_end(self, req, now):
            if req.program == 1 and req.turn == 0:
                c = req.content.copy()
                c.append_virtual(9_999, 20)
                return [Request(1025, 5.0, c, 5, program=1, turn=1, last_turn=True,
                                true_output=5)]
            return []

    reqs = [turn(1, 0, 0.0, 200, out=5), make_request(50, 4.5, 300, 400),
            turn(2, 0, 4.99, 200, last=True, out=5)]
    cfg = SimConfig(policy=policy, perf=LinearPerf(blocks=500), num_gpu_blocks=500,
                    max_num_seqs=1)
    engine = build_engine(cfg)
    started: dict[int, float] = {}
    SimLoop(engine, W(reqs), on_request_end=lambda r: started.__setitem__(
        r.id, r.first_scheduled)).run()
    return started


def test_program_fcfs_serves_the_older_program_first():
    fcfs, prog = _order_run("vllm"), _order_run("program_fcfs")
    assert fcfs[2048] < fcfs[1025]  # per-call FCFS: the newcomer cuts in
    assert prog[1025] < prog[2048]  # program FCFS: the program that started first


# -- thunderagent -------------------------------------------------------------------------------
def test_thunderagent_gate_admits_while_programs_fit_then_pauses_idle_ones():
    p = make_policy("thunderagent", target=1.0, hold=30.0)
    table = ProgramTable()
    cap = 1000 * 16
    a, b = turn(1, 0, 0.0, cap // 2 + 100), turn(2, 0, 0.0, cap // 2 + 100)
    for r in (a, b):
        table.on_arrival(r)
        p.on_arrival(r, view(programs=table))
    assert p.admit(a, view(programs=table))
    assert not p.admit(b, view(programs=table))  # would overflow the cache: paused
    a.num_computed = a.num_tokens = a.prompt_len
    a.state = RequestState.FINISHED
    assert p.retain(a, view(now=1.0, programs=table)) == pytest.approx(30.0)
    table.on_end(a, 1.0)
    assert not p.admit(b, view(now=20.0, programs=table))  # A is idle but still held
    assert p.next_wakeup(view(now=20.0, programs=table)) == pytest.approx(31.0)
    assert p.admit(b, view(now=31.0, programs=table))  # A's hold ran out: paused, B runs
    assert p.paused == 1
    assert p.key(b, 31.0) < p.key(turn(1, 1, 32.0, 100), 32.0)  # A must pass the gate again


def test_thunderagent_decay_pauses_idle_programs_sooner():
    p = make_policy("thunderagent", hold=300.0, decay=10.0, demote_below=0.5)
    table = ProgramTable()
    a = turn(1, 0, 0.0, 100)
    table.on_arrival(a)
    p.on_arrival(a, view(programs=table))
    p.admit(a, view(programs=table))
    a.num_computed = a.num_tokens = 100
    assert p.retain(a, view(now=1.0)) == pytest.approx(10.0 * math.log(2.0))


# -- saga ---------------------------------------------------------------------------------------
def test_saga_serves_the_tenant_with_less_service_first():
    p = make_policy("saga")
    table = ProgramTable()
    heavy_old = turn(1, 0, 0.0, 100, user="heavy")
    light_new = turn(2, 0, 5.0, 100, user="light")
    for r in (heavy_old, light_new):
        table.on_arrival(r)
        p.on_arrival(r, view(now=r.arrival, programs=table))
    p.on_step([(heavy_old, 5000)], view())
    assert p.key(light_new, 6.0) < p.key(heavy_old, 6.0)
    late = turn(3, 0, 7.0, 100, user="late")  # arrives after idling: lifted, no banked credit
    table.on_arrival(late)
    p.on_arrival(late, view(now=7.0, programs=table))
    assert p.service["late"] == p.service["light"] == 0
    p.on_step([(light_new, 100)], view())
    p.on_decode_run([light_new], 7, view())
    assert p.service["light"] == 107


# -- metrics ------------------------------------------------------------------------------------
def _rec(pid, k, arrival, sched, finish, prompt, out, cached, last, state="finished", user="u"):
    return RequestRecord(pid * 1024 + k, user, "", 0, pid, k, last, arrival, sched, sched + .1,
                         finish, prompt, out, cached, 0, 0, state, "stop", math.nan, math.nan,
                         math.nan, 1.0)


def test_program_summary_jct_and_reprefill():
    recs = [_rec(1, 0, 0.0, 0.5, 2.0, 320, 17, 0, False),
            _rec(1, 1, 5.0, 5.0, 8.0, 400, 10, 160, True),  # reusable 336, hit 160
            _rec(2, 0, 1.0, 1.0, 3.0, 100, 10, 0, True),
            _rec(3, 0, 1.0, 1.0, 3.0, 100, 10, 0, False, state="aborted")]
    s = program_summary(recs, block_size=16)
    assert s["programs"] == 3 and s["programs_completed"] == 2 and s["programs_failed"] == 1
    assert s["mean_program_jct_s"] == pytest.approx((8.0 + 2.0) / 2)
    assert s["reusable_context_tokens"] == 336
    assert s["reprefilled_context_tokens"] == 176
    assert s["context_hit_rate"] == pytest.approx(160 / 336)
    assert s["mean_turn_queue_s"] == pytest.approx((0.5 + 0 + 0) / 3)
    assert s["programs_per_minute"] == pytest.approx(2 / 8.0 * 60)


# -- kvflow ----------------------------------------------------------------------------------
def test_kvflow_gives_up_the_latest_returning_programs_pin_first():
    """Steps-to-execution, not expiry: under pressure the pin of the program whose tool is
    predicted to return last goes first, though the soonest-returning program's pin (short
    quantile TTL) expires first; a program whose turn is queued keeps its pin longest, and
    once the turn runs the pin has no use."""
    from sluice.core.kv import Pin

    pol = make_policy("kvflow", budget=1.0)
    for _ in range(50):
        pol.history.observe("fast", 0.5)
        pol.history.observe("slow", 60.0)
    v = view(now=10.0)
    slow, fast, back = (turn(p, 0, 0.0, 320, tool=t) for p, t in ((1, "slow"), (2, "fast"),
                                                                   (3, "fast")))
    for r in (slow, fast, back):
        r.num_computed = 320
        assert pol.retain(r, v) is not None
    pins = [Pin(1, [1], 10.0 + 60.0, owner=1), Pin(2, [2], 10.0 + 0.5, owner=2),
            Pin(3, [3], 10.0 + 0.5, owner=3)]
    back = turn(3, 1, 10.2, 400)
    pol.on_arrival(back, view(now=10.2))  # queued: the next to execute keeps its pin longest
    order = [p.owner for p in sorted(pins, key=lambda p: pol.reclaim_key(p, v))]
    assert order == [1, 2, 3]
    pol.on_admit(back, view(now=10.3))  # running: its blocks are held anyway
    order = [p.owner for p in sorted(pins, key=lambda p: pol.reclaim_key(p, v))]
    assert order == [3, 1, 2]
    assert [p.owner for p in sorted(pins, key=lambda p: (p.expiry, p.id))] == [2, 3, 1]


def test_expected_residual_is_memoryless_for_the_prior_and_grows_for_heavy_tails():
    h = ToolHistory(prior_mean=4.0)
    assert h.expected_residual("new", 0.0) == pytest.approx(4.0)
    assert h.expected_residual("new", 30.0) == pytest.approx(4.0)  # exponential: memoryless
    h = ToolHistory(prior_mean=4.0, prior_weight=0.0)
    for x in [1.0] * 90 + [100.0] * 10:
        h.observe("mixed", x)
    assert h.expected_residual("mixed", 0.0) == pytest.approx(h.mean("mixed"))
    assert h.expected_residual("mixed", 50.0) == pytest.approx(50.0)  # only the long calls left
    assert h.expected_residual("mixed", 200.0) == math.inf  # outlived every call: no estimate


def test_kvflow_re_predicts_an_overdue_call_as_a_long_one():
    """Two programs of the same heavy-tailed tool: the one whose call is 50 s old (overdue
    for a tool that mostly takes 1 s) is now expected back later than the one that just
    left, so its pin is the one given up first."""
    from sluice.core.kv import Pin

    pol = make_policy("kvflow", budget=1.0, prior_weight=0.0)
    for x in [1.0] * 90 + [100.0] * 10:
        pol.history.observe("mixed", x)
    old, new = turn(1, 0, 0.0, 320, tool="mixed"), turn(2, 0, 0.0, 320, tool="mixed")
    for r, t in ((old, 0.0), (new, 50.0)):
        r.num_computed = 320
        assert pol.retain(r, view(now=t)) is not None
    pins = [Pin(1, [1], 500.0, owner=1), Pin(2, [2], 500.0, owner=2)]
    order = [p.owner for p in sorted(pins, key=lambda p: pol.reclaim_key(p, view(now=50.0)))]
    assert order == [1, 2]


def test_a_composition_keeps_the_pin_rule_of_the_part_that_pins():
    assert make_policy("continuum").pins_yield_to_waiting is False
    assert make_policy("continuum", yield_to_waiting=True).pins_yield_to_waiting is True
    assert make_policy("continuum+vtc").pins_yield_to_waiting is False
    assert make_policy("vtc+continuum").pins_yield_to_waiting is False
    assert make_policy("kvflow+continuum").pins_yield_to_waiting is True  # kvflow's pins
    assert make_policy("vtc").pins_yield_to_waiting is True
