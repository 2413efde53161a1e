"""past_future: the peak formula and admission decisions."""

from __future__ import annotations

import numpy as np
from conftest import LinearPerf, make_request

from sluice.policies.admission import PastFuture, peak_tokens
from sluice.policies.base import View
from sluice.sim.runner import SimConfig, run_simulation
from sluice.workload.base import ListWorkload


def brute_peak(cur, rem) -> float:
    return max(sum(c + min(t, r) for c, r in zip(cur, rem) if r >= t)
               for t in range(0, int(max(rem)) + 1))


def test_peak_matches_brute_force() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        n = int(rng.integers(1, 8))
        cur = rng.integers(1, 50, n).astype(float)
        rem = rng.integers(1, 40, n).astype(float)
        assert peak_tokens(cur, rem) == brute_peak(cur, rem)


def view(running, waiting=(), total=100) -> View:
    return View(0.0, total - sum(len(r.blocks) for r in running), total, 16, list(running),
                list(waiting), 0, {})


def test_refuses_when_predicted_peak_exceeds_capacity() -> None:
    # Each running request: 320 tokens now, may grow by up to 400 (max_tokens, no history).
    running = [make_request(i, 0.0, 320, 400) for i in range(2)]
    new = make_request(9, 0.0, 320, 400)
    p = PastFuture(predictor="none", reserve=0.0)
    # peak = 3 * (320 + 400) = 2160 tokens = 135 blocks + 3 > 100
    assert not p.admit(new, view(running))
    # with only 20 blocks the current KV fits, the predicted peak does not; at 200 both fit
    assert p.admit(new, view(running, total=200))


def test_history_lets_it_admit_more_than_max_tokens_reservation() -> None:
    p = PastFuture(predictor="history", quantile=0.9, min_samples=5, reserve=0.0)
    for i in range(20):  # outputs seen so far are 10 tokens
        done = make_request(100 + i, 0.0, 10, 10)
        done.num_output = 10
        p.on_finish(done, view([]))
    running = [make_request(i, 0.0, 320, 400) for i in range(2)]
    assert p.admit(make_request(9, 0.0, 320, 400), view(running))


def test_never_refuses_into_an_empty_batch() -> None:
    p = PastFuture(predictor="none")
    assert p.admit(make_request(0, 0.0, 5000, 5000), view([], total=10))


def test_past_future_avoids_preemptions_vllm_suffers() -> None:
    """Outputs far longer than the cache allows for all at once: vllm admits everything and
    preempts; past_future (conservative until history builds) preempts much less."""
    def reqs():
        return [make_request(i, i * 0.01, 200, 300) for i in range(40)]

    def run(policy):
        cfg = SimConfig(policy=policy, perf=LinearPerf(blocks=200))
        return run_simulation(cfg, ListWorkload(reqs())).summary

    assert run("vllm")["preemptions"] > 3 * max(1, run("past_future")["preemptions"])
