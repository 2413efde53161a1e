"""VTC and UWFQ on hand-built scenarios, and VTC's fairness bound as a property."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from conftest import LinearPerf, make_request

from sluice.core.request import RequestState
from sluice.sim.runner import SimConfig, build_engine, run_simulation
from sluice.workload.base import ListWorkload


def serve(policy: str, reqs, **kw):
    cfg = SimConfig(policy=policy, perf=LinearPerf(), **kw)
    res = run_simulation(cfg, ListWorkload(reqs), keep_requests=True)
    return {r.id: r for r in res.requests}


def flood_then_one():
    """Tenant a queues 10 requests at t=0; tenant b sends one at t=0.001."""
    reqs = [make_request(i, 0.0, 200, 50, user="a") for i in range(10)]
    reqs.append(make_request(99, 0.001, 200, 50, user="b"))
    return reqs


def test_vtc_serves_the_underserved_tenant_next() -> None:
    by_id = serve("vtc", flood_then_one(), max_num_seqs=1)
    b_start = by_id[99].first_scheduled
    a_before = sum(1 for i in range(10) if by_id[i].first_scheduled < b_start)
    assert a_before == 1  # only the request already running when b arrived


def test_vllm_serves_the_flood_first() -> None:
    by_id = serve("vllm", flood_then_one(), max_num_seqs=1)
    assert all(by_id[i].first_scheduled < by_id[99].first_scheduled for i in range(10))


def test_vtc_weights_give_proportional_service() -> None:
    """Both tenants backlogged; a has weight 3: it gets ~3x the service while both wait."""
    reqs = [make_request(i, 0.0, 100, 20, user="ab"[i % 2]) for i in range(80)]
    by_id = serve("vtc", reqs, max_num_seqs=1, policy_options={"weights": "a:3,b:1"})
    order = sorted(by_id.values(), key=lambda r: r.first_scheduled)[:40]
    n_a = sum(1 for r in order if r.user == "a")
    assert 28 <= n_a <= 32  # 3:1 of the first 40


def test_vtc_lift_rule_idle_tenant_banks_no_credit() -> None:
    """b was idle while a ran alone; when b arrives it is lifted to a's counter, so it does not
    get all the service until it 'catches up' (a still gets about half)."""
    reqs = [make_request(i, 0.0, 100, 20, user="a") for i in range(40)]
    reqs += [make_request(100 + i, 1.0, 100, 20, user="b") for i in range(40)]
    by_id = serve("vtc", reqs, max_num_seqs=1)
    after = sorted((r for r in by_id.values() if r.first_scheduled > 1.0),
                   key=lambda r: r.first_scheduled)[:20]
    n_a = sum(1 for r in after if r.user == "a")
    assert 8 <= n_a <= 12


def test_uwfq_heavy_user_gets_no_more_than_its_share() -> None:
    """a sends 10x more same-size requests than b; while both wait they alternate."""
    def reqs():
        return ([make_request(i, 0.0, 100, 20, user="a") for i in range(50)]
                + [make_request(100 + i, 0.0, 100, 20, user="b") for i in range(5)])
    by_id = serve("uwfq", reqs(), max_num_seqs=1)
    first10 = sorted(by_id.values(), key=lambda r: r.first_scheduled)[:10]
    assert sum(1 for r in first10 if r.user == "b") == 5
    fcfs = serve("vllm", reqs(), max_num_seqs=1)
    first10 = sorted(fcfs.values(), key=lambda r: (r.first_scheduled, r.id))[:10]
    assert sum(1 for r in first10 if r.user == "b") == 0


def _service(reqs, user: str, w_in: float, w_out: float) -> float:
    return sum(w_in * r.prompt_len * (r.first_scheduled >= 0) + w_out * r.num_output
               for r in reqs if r.user == user)


@settings(max_examples=25, deadline=None)
@given(lens=st.lists(st.tuples(st.sampled_from("ab"), st.integers(1, 300), st.integers(1, 60)),
                     min_size=12, max_size=40),
       seqs=st.integers(1, 6), budget=st.sampled_from([64, 256, 2048]))
def test_vtc_bound_between_backlogged_tenants(lens, seqs, budget) -> None:
    """Sheng et al. Thm: while two tenants are both backlogged, the difference of the service
    they receive over any interval is at most 2 * (w_in * max_input + w_out * max_tokens)."""
    w_in, w_out = 1.0, 2.0
    reqs = [make_request(i, 0.0, p, o, user=u) for i, (u, p, o) in enumerate(lens)]
    reqs += [make_request(1000, 0.0, 5, 1, user="a"), make_request(1001, 0.0, 5, 1, user="b")]
    bound = 2 * (w_in * max(r.prompt_len for r in reqs) + w_out * max(r.max_tokens for r in reqs))
    engine = build_engine(SimConfig(policy="vtc", perf=LinearPerf(), max_num_seqs=seqs,
                                    max_num_batched_tokens=budget))
    for r in reqs:
        engine.add_request(r, 0.0)
    now, diffs = 0.0, [0.0]
    while engine.has_work:
        plan, result = engine.begin(now)
        now += result.duration
        engine.complete(plan, result, now)
        waiting = {r.user for r in reqs if r.state in (RequestState.WAITING,)}
        if waiting != {"a", "b"}:
            break  # one tenant is no longer backlogged: the theorem's interval ends
        diffs.append(_service(reqs, "a", w_in, w_out) - _service(reqs, "b", w_in, w_out))
    assert max(diffs) - min(diffs) <= bound


def test_uwfq_weights_split_service() -> None:
    """Same demand, weight 2:1: while both are backlogged a gets two requests per b's one."""
    reqs = ([make_request(i, 0.0, 100, 20, user="a") for i in range(30)]
            + [make_request(100 + i, 0.0, 100, 20, user="b") for i in range(30)])
    by_id = serve("uwfq", reqs, max_num_seqs=1, policy_options={"weights": "a:2,b:1"})
    first = sorted(by_id.values(), key=lambda r: r.first_scheduled)[:30]
    assert sum(1 for r in first if r.user == "a") == 20
