"""Data-parallel ranks in lock step (sim/lockstep.py) and vLLM's DP load balancer."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice.core.request import RequestState
from sluice.errors import ConfigError
from sluice.executors.simulated import SimulatedExecutor
from sluice.metrics.records import RequestRecord
from sluice.perf.validate import E2E, _measured, _simulate
from sluice.sim.lockstep import DPBalancer, LockstepLoop, RoundRobin
from sluice.sim.loop import SimLoop
from sluice.sim.runner import SimConfig, build_engine, run_simulation
from sluice.workload.base import ListWorkload
from conftest import LinearPerf, make_request


def _config(blocks: int = 400, dp: int = 1, balancer: str = "vllm") -> SimConfig:
    return SimConfig(perf=LinearPerf(blocks=blocks), policy="vllm", block_size=16,
                     max_num_batched_tokens=512, fast_forward=False,
                     max_model_len=min(2048, blocks * 16), dp=dp, dp_balancer=balancer)


def _engines(n: int, blocks: int = 400, step_a: tuple[float, ...] = ()) -> list:
    engines = [build_engine(_config(blocks)) for _ in range(n)]
    for e, a in zip(engines, step_a):  # ranks priced differently, to see who sets the pace
        e.executor = SimulatedExecutor(LinearPerf(blocks=blocks, a=a))
    return engines


def _record_begins(engines, log):
    """Log (now, rank, duration or None) of every plan each rank makes."""
    for rank, engine in enumerate(engines):
        def begin(now, _orig=engine.begin, _rank=rank):
            b = _orig(now)
            log.append((now, _rank, None if b is None else b[1].duration))
            return b
        engine.begin = begin


@st.composite
def workloads(draw):
    n = draw(st.integers(1, 30))
    reqs, t = [], 0.0
    for i in range(n):
        t += draw(st.floats(0.0, 0.3))
        prompt = draw(st.integers(1, 600))
        out = draw(st.integers(1, 80))
        shared = draw(st.booleans()) and prompt > 64
        reqs.append(make_request(i, t, prompt, out, prefix=(1, 64) if shared else None))
    return reqs


settings.register_profile("lockstep", max_examples=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])


@settings(settings.get_profile("lockstep"))
@given(reqs=workloads(), ranks=st.integers(1, 3), blocks=st.integers(40, 300),
       balancer=st.sampled_from(["vllm", "round_robin"]))
def test_every_request_ends_once_on_one_rank(reqs, ranks, blocks, balancer):
    engines = _engines(ranks, blocks)
    bal = DPBalancer(ranks) if balancer == "vllm" else RoundRobin(ranks)
    ended = []
    loop = LockstepLoop(engines, ListWorkload(reqs), balancer=bal, on_request_end=ended.append)
    loop.run()
    assert sorted(r.id for r in ended) == sorted(r.id for r in reqs)
    assert sum(loop.stats.dispatched) == len(reqs)
    for e in engines:
        assert not e.has_work
        e.kv.check([])
    for r in ended:
        assert r.state in (RequestState.FINISHED, RequestState.REJECTED)
        if r.state == RequestState.FINISHED:
            assert r.arrival <= r.first_scheduled <= r.first_token <= r.finish_time
            assert r.num_output == r.true_output


def test_steps_start_together_and_last_as_long_as_the_slowest_rank():
    reqs = [make_request(i, 0.05 * i, 50 + 37 * i, 20 + 3 * i) for i in range(12)]
    engines = _engines(2, step_a=(2e-3, 9e-3))  # rank 1 has a much larger per-step cost
    log: list[tuple[float, int, float | None]] = []
    _record_begins(engines, log)
    ended = []
    loop = LockstepLoop(engines, ListWorkload(reqs), on_request_end=ended.append)
    loop.run()
    steps: dict[float, list] = {}
    for now, rank, dur in log:
        steps.setdefault(now, []).append((rank, dur))
    times = sorted(steps)
    ends = set()
    for t, t_next in zip(times, times[1:]):
        assert [rank for rank, _ in steps[t]] == [0, 1]  # both ranks plan at the same instant
        durs = [d for _, d in steps[t] if d is not None]
        if durs:
            assert t_next == t + max(durs)  # the next step starts when the slowest rank ends
            ends.add(t + max(durs))
    assert loop.stats.steps == sum(1 for t in times if any(d is not None for _, d in steps[t]))
    assert sum(loop.stats.dummy_steps) > 0  # one rank idled while the other ran
    for r in ended:  # tokens are delivered at lock-step boundaries only
        assert r.first_token in ends and r.finish_time in ends


def test_a_cheap_rank_waits_for_a_slow_one():
    reqs = [make_request(i, 0.0, 64, 30) for i in range(2)]  # one request per rank
    engines = _engines(2, step_a=(1e-3, 10e-3))
    loop = LockstepLoop(engines, ListWorkload(reqs), balancer=RoundRobin(2))
    loop.run()
    fast, slow = (e for e in engines)
    assert loop.stats.wait_s[0] > 0.25 and loop.stats.wait_s[1] == 0.0
    # both requests took the same number of steps and the same time
    assert reqs[0].finish_time == reqs[1].finish_time
    assert fast.steps == slow.steps == loop.stats.steps


@settings(settings.get_profile("lockstep"))
@given(reqs=workloads(), blocks=st.integers(40, 300))
def test_one_rank_in_lock_step_is_the_plain_loop(reqs, blocks):
    def run(lockstep: bool):
        rs = copy.deepcopy(reqs)
        engine = build_engine(_config(blocks))
        ended = []
        if lockstep:
            LockstepLoop([engine], ListWorkload(rs), on_request_end=ended.append).run()
        else:
            SimLoop(engine, ListWorkload(rs), fast_forward=False,
                    on_request_end=ended.append).run()
        out = [repr(RequestRecord.of(r)) for r in ended]
        return out, engine.scheduler.all_itls().tolist(), engine.steps

    assert run(True) == run(False)


def _ranks(*counts):
    """Stand-ins for engines with ``(waiting, running)`` queue lengths."""
    return [SimpleNamespace(scheduler=SimpleNamespace(waiting=[0] * w, running=[0] * r))
            for w, r in counts]


def test_balancer_picks_lowest_four_waiting_plus_running():
    b = DPBalancer(3)
    b.refresh(0.1, _ranks((0, 9), (1, 4), (2, 0)))  # scores 9, 8, 8
    assert b.choose(None) == 1  # ties go to the lowest index
    assert b.view[1] == [2, 4]  # the front end counts its own request as waiting
    assert b.choose(None) == 2  # rank 1 is now 12
    assert b.choose(None) == 0  # 9 < 12 = 12


def test_balancer_takes_a_snapshot_at_each_tick_only():
    b = DPBalancer(2, interval=0.1)
    idle = _ranks((0, 0), (0, 0))
    b.refresh(0.05, idle)
    assert b.choose(None) == 0
    assert b.choose(None) == 1  # a burst alternates through the local increments
    assert b.choose(None) == 0
    b.refresh(0.09, _ranks((0, 5), (0, 0)))  # before the first tick: not seen
    assert b.view == [[2, 0], [1, 0]]
    b.refresh(0.1, idle)  # tick: the snapshot replaces the view, increments included
    assert b.view == [[0, 0], [0, 0]]
    b.choose(None)
    b.refresh(0.19, _ranks((0, 3), (1, 1)))  # same tick interval: the increment stays
    assert b.view == [[1, 0], [0, 0]]
    b.refresh(0.31, _ranks((0, 3), (1, 1)))  # two ticks passed with no event: one snapshot
    assert b.view == [[0, 3], [1, 1]]
    assert b.choose(None) == 0  # 3 < 5


def _record_dispatch(engines, log):
    for rank, engine in enumerate(engines):
        def add(req, now, _orig=engine.add_request, _rank=rank):
            log.append((req.id, _rank))
            return _orig(req, now)
        engine.add_request = add


def test_load_balancing_sends_work_to_the_less_loaded_rank():
    # a long request on rank 0, a short one on rank 1 that ends at once, then a long one: the
    # balancer sees rank 1 empty and sends it there; round robin would stack it on rank 0
    reqs = [make_request(0, 0.0, 64, 400), make_request(1, 0.2, 64, 5),
            make_request(2, 0.5, 64, 400)]
    for bal, expect in ((DPBalancer(2), [(0, 0), (1, 1), (2, 1)]),
                        (RoundRobin(2), [(0, 0), (1, 1), (2, 0)])):
        engines, log = _engines(2), []
        _record_dispatch(engines, log)
        LockstepLoop(engines, ListWorkload(copy.deepcopy(reqs)), balancer=bal).run()
        assert log == expect
    # a burst between two snapshots alternates through the front end's own increments
    burst = [make_request(i, 0.0, 64, 50) for i in range(5)]
    loop = LockstepLoop(_engines(2), ListWorkload(burst))
    loop.run()
    assert loop.stats.dispatched == [3, 2]


def test_runner_dp_is_deterministic_and_reports_the_dp_model():
    reqs = [make_request(i, 0.02 * i, 40 + 13 * i, 5 + i % 17) for i in range(40)]

    def run():
        res = run_simulation(_config(dp=2), ListWorkload(copy.deepcopy(reqs)))
        return json.dumps(res.summary, sort_keys=True), [repr(r) for r in res.records]

    a, b = run(), run()
    assert a == b
    summary = json.loads(a[0])
    assert summary["completed"] == 40
    assert summary["dp"]["model"] == "lockstep" and summary["dp"]["ranks"] == 2
    assert sum(summary["dp"]["requests_per_rank"]) == 40
    rr = run_simulation(_config(dp=2, balancer="round_robin"), ListWorkload(copy.deepcopy(reqs)))
    assert rr.summary["dp"]["requests_per_rank"] == [20, 20]


def test_runner_refuses_lock_step_for_a_dense_model_and_bad_settings():
    with pytest.raises(ConfigError, match="not a MoE"):
        run_simulation(SimConfig(model="llama-3.1-8b", gpu="h100", dp=2), ListWorkload([]))
    with pytest.raises(ConfigError, match="balancer"):
        run_simulation(_config(dp=2, balancer="nope"), ListWorkload([]))
    with pytest.raises(ConfigError, match="--dp"):
        run_simulation(_config(dp=0), ListWorkload([]))


def test_validate_replays_the_dp_ep_run_in_lock_step():
    """The real vLLM DP2+EP run (validation data, never fitted) replays in lock step; its mean
    TPOT and E2E stay within the 15% target."""
    run = next(r for r in json.loads((E2E / "runs.json").read_text()) if r["dp"] > 1)
    sim, dp_model = _simulate(run, "fitted")
    assert dp_model.startswith("lockstep x2")
    meas = _measured(run["requests"])
    assert len(sim["e2e"]) == len(meas["e2e"])
    for k in ("tpot", "e2e"):
        assert abs(np.mean(sim[k]) / np.mean(meas[k]) - 1) <= 0.15, k
