"""Every issue-5 policy: registered, option validation, and exact fast-forward."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import LinearPerf, make_request

from sluice.core.request import SLO
from sluice.errors import ConfigError
from sluice.policies.base import make_policy, policy_names
from sluice.sim.runner import SimConfig, run_simulation
from sluice.workload.base import ListWorkload

POLICIES = ["vtc", "uwfq", "priority", "preemptive", "edf", "flowprefill", "jitserve",
            "past_future", "laps", "layered_prefill", "sjf", "vtc+edf", "past_future+sjf",
            "vtc+preemptive"]


def mixed_workload(n: int = 120, seed: int = 1) -> list:
    """Three tenants, two priorities, TTFT SLOs, long and short prompts, bursts."""
    rng = np.random.default_rng(seed)
    t = 0.0
    reqs = []
    for i in range(n):
        t += float(rng.exponential(0.02))
        prompt = int(rng.choice([40, 300, 1500]))
        out = int(rng.integers(1, 120))
        r = make_request(i, t, prompt, out, user=f"t{i % 3}", priority=int(i % 4 == 0),
                         max_tokens=out + int(rng.integers(0, 60)),
                         slo=SLO(ttft=float(rng.choice([0.05, 0.5])), tpot=0.05))
        reqs.append(r)
    return reqs


def run(policy: str, fast_forward: bool, blocks: int = 600, **kw) -> dict:
    cfg = SimConfig(policy=policy, perf=LinearPerf(blocks=blocks), fast_forward=fast_forward,
                    **kw)
    res = run_simulation(cfg, ListWorkload(mixed_workload()))
    return res.summary


def test_all_registered() -> None:
    names = policy_names()
    for p in POLICIES:
        if "+" not in p:
            assert p in names


@pytest.mark.parametrize("policy", POLICIES)
def test_fast_forward_is_exact(policy: str) -> None:
    on = run(policy, True)
    off = run(policy, False)
    assert on["completed"] == 120
    assert json.dumps(on, sort_keys=True) == json.dumps(off, sort_keys=True)


@pytest.mark.parametrize("policy", ["vtc", "uwfq", "edf", "jitserve", "past_future", "laps",
                                    "layered_prefill", "sjf", "preemptive"])
def test_unknown_option_lists_valid(policy: str) -> None:
    with pytest.raises(ConfigError, match="valid:"):
        make_policy(policy, nonsense=1)


@pytest.mark.parametrize("policy,opts", [
    ("vtc", {"w_in": 0}), ("vtc", {"w_out": -1}), ("vtc", {"weights": "a:1,b:0"}),
    ("uwfq", {"weights": "a:-2"}), ("edf", {"prefill_rate": 0}),
    ("edf", {"default_ttft": -1}), ("jitserve", {"quantile": 1.5}),
    ("past_future", {"reserve": 1.0}), ("sjf", {"predictor": "crystal-ball"}),
    ("preemptive", {"mode": "teleport"}), ("laps", {"threshold": 0}),
])
def test_bad_values_are_config_errors(policy: str, opts: dict) -> None:
    with pytest.raises(ConfigError):
        make_policy(policy, **opts)


def test_composition_routes_options_and_rejects_unknown() -> None:
    p = make_policy("past_future+sjf", quantile=0.8, aging=1.0)
    assert p.parts[0].predictor.q == 0.8 and p.parts[1].predictor.q == 0.8
    assert p.parts[1].aging == 1.0
    with pytest.raises(ConfigError, match="valid:.*aging"):
        make_policy("past_future+sjf", bogus=1)
    with pytest.raises(ConfigError, match="unknown policy"):
        make_policy("vtc+nope")


@pytest.mark.parametrize("policy", ["edf", "jitserve"])
def test_slo_policy_rejects_request_without_slo(policy: str) -> None:
    reqs = [make_request(0, 0.0, 100, 10), make_request(7, 0.1, 100, 10)]
    reqs[0].slo = SLO(ttft=1.0)
    cfg = SimConfig(policy=policy, perf=LinearPerf())
    with pytest.raises(ConfigError, match="request 7"):
        run_simulation(cfg, ListWorkload(reqs))
    cfg = SimConfig(policy=policy, perf=LinearPerf(), policy_options={"default_ttft": 2.0})
    assert run_simulation(cfg, ListWorkload(reqs)).summary["completed"] == 2


def test_cli_bad_policy_option_is_one_clear_line(capsys) -> None:
    from sluice.cli import main

    rc = main(["simulate", "--policy", "vtc", "--policy-opt", "w_inn=2", "--workload",
               "poisson", "--num-requests", "5", "--json"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "w_inn" in err and "valid: w_in, w_out, weights" in err
    assert "Traceback" not in err


def test_vtc_plus_edf_orders_by_deadline_within_a_tenant() -> None:
    """One slot; tenant a has a running request and three queued with different deadlines,
    tenant b one queued. vtc decides between tenants, edf within tenant a."""
    def reqs():
        return [make_request(0, 0.0, 100, 30, user="a", slo=SLO(ttft=10.0)),
                make_request(1, 0.01, 100, 5, user="a", slo=SLO(ttft=9.0)),
                make_request(2, 0.01, 100, 5, user="a", slo=SLO(ttft=1.0)),
                make_request(3, 0.01, 100, 5, user="a", slo=SLO(ttft=5.0)),
                make_request(4, 0.02, 100, 5, user="b", slo=SLO(ttft=9.5))]

    def order(policy):
        cfg = SimConfig(policy=policy, perf=LinearPerf(), max_num_seqs=1)
        res = run_simulation(cfg, ListWorkload(reqs()), keep_requests=True)
        return [r.id for r in sorted(res.requests, key=lambda r: r.first_scheduled)]

    assert order("vtc+edf") == [0, 4, 2, 3, 1]  # b first (a was served), then a by deadline
    assert order("vtc") == [0, 4, 1, 2, 3]  # FCFS within a
    assert order("edf") == [0, 2, 3, 1, 4]  # deadlines only
