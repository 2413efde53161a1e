"""edf/flowprefill and jitserve on hand-built scenarios."""

from __future__ import annotations

from conftest import LinearPerf, make_request

from sluice.core.request import SLO
from sluice.sim.runner import SimConfig, run_simulation
from sluice.workload.base import ListWorkload


def serve(policy: str, reqs, **kw):
    cfg = SimConfig(policy=policy, perf=LinearPerf(), **kw)
    res = run_simulation(cfg, ListWorkload(reqs), keep_requests=True)
    return {r.id: r for r in res.requests}, res


def deadline_mix():
    """One request occupies the single slot; four wait with different TTFT SLOs. Request 4's
    deadline (1 ms) is the earliest but cannot be met: it is hopeless."""
    return [make_request(0, 0.0, 100, 30, slo=SLO(ttft=10.0)),
            make_request(1, 0.01, 100, 5, slo=SLO(ttft=5.0)),
            make_request(2, 0.01, 100, 5, slo=SLO(ttft=1.0)),
            make_request(3, 0.01, 100, 5, slo=SLO(ttft=3.0)),
            make_request(4, 0.01, 100, 5, slo=SLO(ttft=0.001))]


def test_edf_orders_by_deadline_and_drops_hopeless() -> None:
    by_id, _ = serve("edf", deadline_mix(), max_num_seqs=1)
    order = [r.id for r in sorted(by_id.values(), key=lambda r: r.first_scheduled)]
    assert order == [0, 2, 3, 1, 4]


def test_vllm_is_fcfs_on_the_same_mix() -> None:
    by_id, _ = serve("vllm", deadline_mix(), max_num_seqs=1)
    order = [r.id for r in sorted(by_id.values(), key=lambda r: (r.first_scheduled, r.id))]
    assert order == [0, 1, 2, 3, 4]


def long_then_urgent():
    return [make_request(0, 0.0, 7000, 5, slo=SLO(ttft=20.0)),
            make_request(1, 0.01, 50, 5, slo=SLO(ttft=0.05))]


def test_flowprefill_interrupts_a_long_prefill_for_an_urgent_arrival() -> None:
    by_id, res = serve("flowprefill", long_then_urgent())
    assert res.loop_stats["interruptions"] >= 1
    assert by_id[1].first_token < by_id[0].first_token
    assert by_id[1].ttft() <= 0.05
    base, _ = serve("vllm", long_then_urgent())
    assert base[1].ttft() > by_id[1].ttft()


def test_jitserve_prefers_least_predicted_work_among_feasible() -> None:
    reqs = [make_request(0, 0.0, 100, 30, slo=SLO(ttft=10.0)),
            make_request(1, 0.01, 100, 400, slo=SLO(ttft=5.0)),
            make_request(2, 0.01, 100, 10, slo=SLO(ttft=5.0)),
            make_request(3, 0.01, 100, 2, slo=SLO(ttft=0.001))]
    by_id, _ = serve("jitserve", reqs, max_num_seqs=1,
                     policy_options={"predictor": "oracle"})
    order = [r.id for r in sorted(by_id.values(), key=lambda r: r.first_scheduled)]
    assert order == [0, 2, 1, 3]  # 3 is the least work but hopeless


def test_jitserve_without_oracle_falls_back_to_max_tokens() -> None:
    """No history yet: the predictor knows only max_tokens, which here inverts the truth."""
    reqs = [make_request(0, 0.0, 100, 30, slo=SLO(ttft=10.0)),
            make_request(1, 0.01, 100, 5, max_tokens=500, slo=SLO(ttft=5.0)),
            make_request(2, 0.01, 100, 50, max_tokens=60, slo=SLO(ttft=5.0))]
    by_id, _ = serve("jitserve", reqs, max_num_seqs=1)
    assert by_id[2].first_scheduled < by_id[1].first_scheduled
