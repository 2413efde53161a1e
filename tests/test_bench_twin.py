"""``sluice bench --twin`` adds the measured time outside the engine to simulated requests."""

from __future__ import annotations

import argparse

import pytest

from sluice.bench.twin import describe_calibration, with_frontend
from sluice.sim.runner import SimConfig, run_simulation
from sluice.workload.spec import add_workload_args, build_workload

FRONTEND = {"requests": 10, "loop_wait_s": 1e-4, "in_const_s": 1e-3, "in_per_token_s": 1e-6,
            "out_first_s": 4e-3, "out_last_s": 5e-4}


def _sim():
    p = argparse.ArgumentParser()
    add_workload_args(p)
    args = p.parse_args(["--workload", "poisson", "--rate", "5", "--num-requests", "30",
                         "--input-len", "100", "--output-len", "10"])
    return run_simulation(SimConfig(), build_workload(args))


def test_front_end_and_round_trip_shift_ttft_and_e2e_exactly():
    res = _sim()
    base = res.summary
    out = with_frontend(base, res.records, res.itls, FRONTEND, {}, rtt=2e-3)
    t_in = 2e-3 + 1e-4 + 1e-3 + 1e-6 * 100
    assert out["mean_ttft_ms"] == pytest.approx(base["mean_ttft_ms"] + 1e3 * (t_in + 4e-3))
    assert out["p90_ttft_ms"] == pytest.approx(base["p90_ttft_ms"] + 1e3 * (t_in + 4e-3))
    assert out["mean_e2el_ms"] == pytest.approx(base["mean_e2el_ms"] + 1e3 * (t_in + 5e-4))
    assert out["mean_itl_ms"] == pytest.approx(base["mean_itl_ms"])  # gaps do not move
    assert out["steps"] == base["steps"] and out["completed"] == base["completed"]
    assert with_frontend(base, res.records, res.itls, None, {}) == base


def test_calibration_is_described():
    doc = {"coeffs": {"scale": 2.0, "step_overhead": 1e-3, "seq_overhead": 1e-5},
           "target": "period", "steps": 7, "fit": {"mape_after_pct": 20.0,
                                                   "busy_ratio_after": 1.0},
           "frontend": FRONTEND, "transport": {"rtt_s": 3e-3, "probes": 5}}
    text = describe_calibration(doc)
    assert "period, 7 steps" in text and "loop wait" in text and "round trip 3.000 ms" in text
    assert "none in the log" in describe_calibration({**doc, "frontend": None})
