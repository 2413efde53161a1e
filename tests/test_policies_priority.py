"""priority / preemptive on a hand-built KV squeeze."""

from __future__ import annotations

import pytest
from conftest import LinearPerf, make_request

from sluice.sim.runner import SimConfig, run_simulation
from sluice.workload.base import ListWorkload


def squeeze(policy: str, **kw):
    """20 blocks (320 tokens). A low-priority request fills most of it; a high-priority one
    arrives and cannot fit."""
    reqs = [make_request(0, 0.0, 160, 120, priority=1),
            make_request(1, 0.05, 150, 10, priority=0)]
    cfg = SimConfig(policy=policy, perf=LinearPerf(blocks=20), **kw)
    res = run_simulation(cfg, ListWorkload(reqs), keep_requests=True)
    return {r.id: r for r in res.requests}


def test_static_priority_does_not_evict() -> None:
    r = squeeze("priority")
    assert r[0].preemptions == 0
    assert r[1].first_token > r[0].finish_time


@pytest.mark.parametrize("mode", ["swap", "recompute"])
def test_preemptive_evicts_the_low_priority_request(mode: str) -> None:
    r = squeeze("preemptive", policy_options={"mode": mode})
    assert r[0].preemptions >= 1
    assert r[1].first_token < r[0].finish_time
    assert r[0].num_output == 120  # the victim still completes
    if mode == "swap":
        assert r[0].recomputed_tokens == 0
    else:
        assert r[0].recomputed_tokens > 0


def test_preemptive_never_evicts_equal_priority() -> None:
    reqs = [make_request(0, 0.0, 160, 120, priority=0),
            make_request(1, 0.05, 150, 10, priority=0)]
    cfg = SimConfig(policy="preemptive", perf=LinearPerf(blocks=20))
    res = run_simulation(cfg, ListWorkload(reqs), keep_requests=True)
    assert res.summary["preemptions"] == 0


def test_cli_preemption_mode_overrides_policy_default() -> None:
    r = squeeze("preemptive", preemption_mode="recompute")
    assert r[0].recomputed_tokens > 0


def test_vtc_preemptive_evicts_the_tenant_with_the_larger_counter() -> None:
    """by=rank under vtc+preemptive: tenant a has used lots of service; b's new request evicts
    a's running one though they have equal priority."""
    reqs = [make_request(0, 0.0, 160, 120, user="a"),
            make_request(1, 0.3, 150, 10, user="b")]
    cfg = SimConfig(policy="vtc+preemptive", perf=LinearPerf(blocks=20),
                    policy_options={"by": "rank"})
    res = run_simulation(cfg, ListWorkload(reqs), keep_requests=True)
    r = {x.id: x for x in res.requests}
    assert r[0].preemptions >= 1 and r[1].first_token < r[0].finish_time


def test_rank_preemption_margin_stops_ping_pong() -> None:
    """Continuous VTC counters: with no margin two tenants evict each other back and forth."""
    from test_policies_common import mixed_workload

    def preemptions(margin: float) -> int:
        cfg = SimConfig(policy="vtc+preemptive", perf=LinearPerf(blocks=600),
                        policy_options={"by": "rank", "margin": margin})
        return run_simulation(cfg, ListWorkload(mixed_workload())).summary["preemptions"]

    assert preemptions(2000) * 10 < preemptions(0)
