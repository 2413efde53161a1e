"""Properties of whole simulations over random workloads and the baseline policies."""

from __future__ import annotations

import copy
import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice.core.request import RequestState
from sluice.executors.simulated import SimulatedExecutor
from sluice.sim.runner import SimConfig, build_engine, run_simulation
from sluice.sim.loop import SimLoop
from sluice.workload.base import ListWorkload
from conftest import LinearPerf, make_request

POLICIES = ["vllm", "sarathi", "orca"]


@st.composite
def workloads(draw):
    n = draw(st.integers(1, 40))
    reqs = []
    t = 0.0
    for i in range(n):
        t += draw(st.floats(0.0, 0.5))
        prompt = draw(st.integers(1, 700))
        out = draw(st.integers(1, 120))
        cap = draw(st.one_of(st.none(), st.integers(1, 150)))
        shared = draw(st.booleans()) and prompt > 64
        req = make_request(i, t, prompt, out, max_tokens=cap or out,
                           prefix=(1, 64) if shared else None)
        if not shared and draw(st.booleans()):  # a length-only trace's private prompt
            req.content.private = True
        reqs.append(req)
    return reqs


def _config(policy, blocks, mode, ff=True):
    return SimConfig(perf=LinearPerf(blocks=blocks), policy=policy, block_size=16,
                     preemption_mode=mode, max_num_batched_tokens=1024, fast_forward=ff,
                     max_model_len=min(2048, blocks * 16))


class CheckingExecutor(SimulatedExecutor):
    """Checks KV conservation and request invariants at every step."""

    def __init__(self, perf, engine_ref):
        super().__init__(perf)
        self.engine_ref = engine_ref

    def execute(self, plan):
        sched = self.engine_ref[0].scheduler
        sched.kv.check(sched.running)
        for r in sched.running:
            assert r.state == RequestState.RUNNING
            assert len(r.blocks) * sched.kv.block_size >= r.num_computed
        return super().execute(plan)


settings.register_profile("core", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])


@settings(settings.get_profile("core"))
@given(reqs=workloads(), policy=st.sampled_from(POLICIES), blocks=st.integers(40, 400),
       mode=st.sampled_from(["recompute", "swap"]))
def test_requests_conserved_and_causal(reqs, policy, blocks, mode):
    cfg = _config(policy, blocks, mode)
    engine = build_engine(cfg)
    ref = [engine]
    engine.executor = CheckingExecutor(engine.executor.perf, ref)
    ended = []
    loop = SimLoop(engine, ListWorkload(reqs), fast_forward=False, on_request_end=ended.append)
    loop.run()
    assert sorted(r.id for r in ended) == sorted(r.id for r in reqs)  # none lost, none twice
    engine.kv.check([])
    for r in ended:
        assert r.state in (RequestState.FINISHED, RequestState.REJECTED)
        if r.state == RequestState.REJECTED:
            assert r.stop_reason in ("context", "kv_capacity", "token_budget")
            continue
        assert r.arrival <= r.first_scheduled <= r.first_token <= r.finish_time
        assert r.num_output == min(r.true_output, r.max_tokens)
        assert r.content.length == r.prompt_len + r.num_output


@settings(settings.get_profile("core"))
@given(reqs=workloads(), policy=st.sampled_from(POLICIES), blocks=st.integers(40, 400),
       mode=st.sampled_from(["recompute", "swap"]))
def test_fast_forward_is_exact_and_runs_are_deterministic(reqs, policy, blocks, mode):
    def run(ff):
        res = run_simulation(_config(policy, blocks, mode, ff), ListWorkload(copy.deepcopy(reqs)),
                             keep_requests=False)
        return json.dumps(res.summary, sort_keys=True), [r.__repr__() for r in res.records]

    on, off, again = run(True), run(False), run(True)
    assert on == off
    assert on == again


def test_fast_forward_actually_skips_steps():
    reqs = [make_request(i, 0.01 * i, 100, 300) for i in range(8)]
    res = run_simulation(_config("vllm", 1000, "recompute"), ListWorkload(reqs))
    assert res.loop_stats["fast_forward_steps"] > 100
    assert res.summary["completed"] == 8


def test_prefix_computed_once_while_cached():
    """A 1,000-token system prompt shared by 20 requests is prefilled once (62 full blocks
    of 16 are cached; the 8-token tail of the prefix sits in a block that also holds the
    request's own tokens, so it is computed per request, as in vLLM)."""
    computed = []

    class Counting(SimulatedExecutor):
        def execute(self, plan):
            computed.append(plan.stats.prefill_tokens)
            return super().execute(plan)

    reqs = [make_request(i, 1.0 * i, 1100, 10, prefix=(42, 1000)) for i in range(20)]
    engine = build_engine(_config("vllm", 2000, "recompute"))
    engine.executor = Counting(engine.executor.perf)
    SimLoop(engine, ListWorkload(reqs)).run()
    cached_prefix = (1000 // 16) * 16
    assert sum(computed) == 1100 + 19 * (1100 - cached_prefix)
    assert all(r.cached_tokens == cached_prefix for r in reqs[1:])


def test_prefix_recomputed_after_eviction():
    """Other traffic between the requests evicts the prefix from a small cache, not a big one."""
    reqs = [make_request(i, 50.0 * i, 1100, 10, prefix=(42, 1000))
            for i in range(3)] + [make_request(100 + i, 50.0 * i + 10, 1500, 5) for i in range(3)]
    small = run_simulation(_config("vllm", 100, "recompute"), ListWorkload(copy.deepcopy(reqs)))
    big = run_simulation(_config("vllm", 2000, "recompute"), ListWorkload(reqs))
    prompt_total = 3 * 1100 + 3 * 1500
    assert big.summary["prefix_hit_rate"] == 2 * 992 / prompt_total
    assert small.summary["prefix_hit_rate"] < big.summary["prefix_hit_rate"]


def test_over_long_requests_are_rejected_and_counted():
    reqs = [make_request(0, 0.0, 100, 10), make_request(1, 0.0, 3000, 10),
            make_request(2, 0.0, 2000, 100)]
    res = run_simulation(_config("vllm", 1000, "recompute"), ListWorkload(reqs))
    assert res.summary["completed"] == 1
    assert res.summary["rejected"] == 2
    assert res.summary["rejected_by_reason"] == {"context": 2}


def test_preemption_happens_and_everything_finishes():
    reqs = [make_request(i, 0.0, 200, 400) for i in range(10)]
    for mode in ("recompute", "swap"):
        res = run_simulation(_config("vllm", 120, mode), ListWorkload(copy.deepcopy(reqs)))
        assert res.summary["completed"] == 10
        assert res.summary["preemptions"] > 0


def test_orca_reserves_max_tokens_and_sarathi_decodes_first():
    reqs = [make_request(i, 0.0, 100, 50, max_tokens=500) for i in range(10)]
    orca = run_simulation(_config("orca", 200, "recompute"), ListWorkload(copy.deepcopy(reqs)))
    vllm = run_simulation(_config("vllm", 200, "recompute"), ListWorkload(copy.deepcopy(reqs)))
    # Orca holds (100 + 500) / 16 = 38 blocks a request: at most 5 run at once, so it is slower
    assert orca.summary["duration"] > vllm.summary["duration"]
    assert orca.summary["preemptions"] == 0


def test_goodput_counts_requests_meeting_every_slo():
    reqs = [make_request(i, 0.1 * i, 50, 20) for i in range(10)]
    cfg = _config("vllm", 1000, "recompute")
    cfg.goodput = {"ttft": 1e-6}
    res = run_simulation(cfg, ListWorkload(reqs))
    assert res.summary["request_goodput"] == 0.0
    cfg.goodput = {"ttft": 100.0, "tpot": 100.0}
    res = run_simulation(cfg, ListWorkload(copy.deepcopy(reqs)))
    assert math.isclose(res.summary["request_goodput"], res.summary["request_throughput"])


@settings(settings.get_profile("core"))
@given(reqs=workloads(), policy=st.sampled_from(POLICIES))
def test_compacting_inter_token_latencies_changes_no_statistic(reqs, policy):
    """Long runs keep ITLs as distinct gaps with counts; the summary must not notice."""
    import pytest
    import sluice.core.scheduler as sched_mod

    def run():
        res = run_simulation(_config(policy, 400, "recompute", False),
                             ListWorkload(copy.deepcopy(reqs)), keep_requests=False)
        return json.dumps(res.summary, sort_keys=True)

    whole = run()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sched_mod, "ITL_COMPACT_AT", 3)
        assert run() == whole
