"""laps, layered_prefill, sjf and the predictors."""

from __future__ import annotations

from conftest import LinearPerf, make_request

from sluice.policies.predictors import make_predictor
from sluice.sim.runner import SimConfig, run_simulation
from sluice.workload.base import ListWorkload


def serve(policy: str, reqs, **kw):
    cfg = SimConfig(policy=policy, perf=LinearPerf(), **kw)
    res = run_simulation(cfg, ListWorkload(reqs), keep_requests=True)
    return {r.id: r for r in res.requests}, res


def long_short():
    return [make_request(0, 0.0, 100, 20),
            make_request(1, 0.01, 4000, 5), make_request(2, 0.01, 3000, 5),
            make_request(3, 0.02, 200, 5), make_request(4, 0.02, 100, 5)]


def test_laps_runs_short_prefills_before_long_ones() -> None:
    by_id, _ = serve("laps", long_short(), max_num_seqs=1)
    order = [r.id for r in sorted(by_id.values(), key=lambda r: r.first_scheduled)]
    assert order == [0, 3, 4, 1, 2]


def test_laps_window_holds_short_prefills_to_batch_them() -> None:
    reqs = [make_request(0, 0.0, 100, 3), make_request(1, 0.001, 100, 3)]
    by_id, _ = serve("laps", reqs, policy_options={"window": 0.01})
    assert by_id[0].first_scheduled >= 0.01 - 1e-12
    assert by_id[0].first_scheduled == by_id[1].first_scheduled  # one batch


def test_layered_prefill_splits_prefill_by_layers_while_decoding() -> None:
    """A decoding request and a 6000-token prompt: without chunking (orca) the decode stalls for
    the whole prefill; layered prefill (1 layer of 4 per step) keeps decode steps short."""
    def reqs():
        return [make_request(0, 0.0, 50, 60), make_request(1, 0.05, 6000, 5)]

    lay, lay_res = serve("layered_prefill", reqs(), policy_options={"layers_per_step": 1})
    orc, orc_res = serve("orca", reqs())
    # the longest stall of request 0's decode: one layer of the prefill instead of all four
    assert lay_res.itls.max() < 0.8 * orc_res.itls.max()
    assert lay[1].first_token > orc[1].first_token  # the prefill itself is spread out


def test_sjf_orders_by_predicted_length() -> None:
    reqs = [make_request(0, 0.0, 100, 30), make_request(1, 0.01, 100, 300),
            make_request(2, 0.01, 100, 3), make_request(3, 0.01, 100, 30)]
    by_id, _ = serve("sjf", reqs, max_num_seqs=1, policy_options={"predictor": "oracle"})
    order = [r.id for r in sorted(by_id.values(), key=lambda r: r.first_scheduled)]
    assert order == [0, 2, 3, 1]


def test_history_predictor_is_conditional_and_refines() -> None:
    p = make_predictor("history", quantile=0.5, min_samples=3)
    for n in [10, 10, 10, 100, 100, 100, 1000]:
        r = make_request(n, 0.0, 5, n, max_tokens=2000)
        r.num_output = n
        p.observe(r)
    q = make_request(1, 0.0, 5, 50, max_tokens=2000)
    assert p.remaining(q) == 100  # median of all seven
    q.num_output = 20  # it outlived the short ones: only 100,100,100,1000 remain possible
    assert p.remaining(q) == 80
    q.num_output = 150  # too few longer samples: falls back to max_tokens
    assert p.remaining(q) == 2000 - 150


def test_oracle_and_given_predictors() -> None:
    r = make_request(0, 0.0, 5, 42, max_tokens=100)
    assert make_predictor("oracle").remaining(r) == 42
    assert make_predictor("none").remaining(r) == 100
    assert make_predictor("given").remaining(r) == 100
    r.predicted_output = 7
    assert make_predictor("given").remaining(r) == 7
