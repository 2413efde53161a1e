"""Mechanisms that policies build on: interruptible prefill, layer groups, wake-ups."""

from __future__ import annotations

import copy
import json

from sluice.policies.base import Policy
from sluice.sim.loop import SimLoop
from sluice.sim.runner import SimConfig, build_engine, run_simulation
from sluice.workload.base import ListWorkload
from conftest import LinearPerf, make_request


class Interruptible(Policy):
    name = "test-interruptible"
    interruptible_prefill = True


class LayerGroups(Policy):
    name = "test-layers"

    def prefill_layers(self, req, view):
        return 1  # one layer of each prefill chunk per step


def _engine(policy, blocks=4000):
    cfg = SimConfig(perf=LinearPerf(blocks=blocks), max_num_batched_tokens=8192)
    engine = build_engine(cfg)
    engine.scheduler.policy = policy
    engine.policy = policy
    return engine


def _run(policy, reqs):
    engine = _engine(policy)
    ended = []
    loop = SimLoop(engine, ListWorkload(reqs), on_request_end=ended.append)
    loop.run()
    engine.kv.check([])
    return loop, ended


def test_arrival_cuts_an_interruptible_prefill_at_a_layer_boundary():
    # a long prompt (about 5 ms + 4000 x 10 us = 45 ms step) and a short one arriving mid-step
    long_req = make_request(0, 0.0, 4000, 5)
    short = make_request(1, 0.010, 50, 5)
    loop, ended = _run(Interruptible(), [long_req, short])
    assert loop.stats.interruptions == 1
    assert {r.id for r in ended} == {0, 1}
    # the short request no longer waits for the whole 4,000-token prefill
    base_loop, base_ended = _run(Policy(), [make_request(0, 0.0, 4000, 5),
                                            make_request(1, 0.010, 50, 5)])
    assert short.first_token < [r for r in base_ended if r.id == 1][0].first_token
    # the long one resumed from the completed layers: it pays less than a full redo
    assert long_req.num_output == 5


def test_interrupted_work_is_not_charged_twice():
    """Layers done before the cut are kept: total prefill cost equals one uninterrupted
    prefill (within the one partial layer that the cut wastes)."""
    perf = LinearPerf()
    costs = []
    engine = _engine(Interruptible())

    orig = engine.executor.execute

    def spy(plan):
        costs.append(plan.stats.prefill_tokens)
        return orig(plan)

    engine.executor.execute = spy
    SimLoop(engine, ListWorkload([make_request(0, 0.0, 4000, 2),
                                  make_request(1, 0.010, 16, 2)])).run()
    # step 1 plans 4,000 tokens (about 45 ms); the arrival at 10 ms cuts it after layer
    # ceil(10 / 45 * 4) = 1 of 4. Step 2 resumes it priced at the 3 remaining layers, with
    # the newcomer's 16 tokens beside it.
    assert costs[0] == 4000
    assert costs[1] == 4000 * (1 - 1 / perf.num_layers) + 16


def test_layer_groups_interleave_with_decode():
    reqs = [make_request(0, 0.0, 20, 50), make_request(1, 0.05, 3000, 3)]
    _loop, ended = _run(LayerGroups(), reqs)
    assert {r.id for r in ended} == {0, 1}
    assert reqs[1].num_output == 3


def test_wakeup_lets_a_waiting_policy_resume():
    class Window(Policy):
        name = "test-window"
        static_key = True
        fast_forward_safe = False

        def admit(self, req, view):
            return view.now >= req.arrival + 0.5  # hold each request for 0.5 s

        def next_wakeup(self, view):
            return min(r.arrival + 0.5 for r in view.waiting)

    reqs = [make_request(0, 0.0, 10, 2)]
    _loop, ended = _run(Window(), reqs)
    assert ended and reqs[0].first_scheduled == 0.5


def test_interruptible_runs_are_deterministic():
    reqs = [make_request(i, 0.003 * i, 500 + 37 * i, 20) for i in range(30)]
    cfg = SimConfig(perf=LinearPerf(), policy="vllm")

    def run():
        engine_policy = Interruptible()
        engine = build_engine(cfg)
        engine.scheduler.policy = engine.policy = engine_policy
        ended = []
        SimLoop(engine, ListWorkload(copy.deepcopy(reqs)), on_request_end=ended.append).run()
        return [(r.id, r.first_token, r.finish_time) for r in sorted(ended, key=lambda r: r.id)]

    assert run() == run()
    assert json.dumps(run_simulation(cfg, ListWorkload(copy.deepcopy(reqs))).summary) == \
        json.dumps(run_simulation(cfg, ListWorkload(copy.deepcopy(reqs))).summary)
