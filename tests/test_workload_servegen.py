"""ServeGen multi-client generator on the bundled DeepSeek-R1 client data."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from sluice.errors import ConfigError
from sluice.workload.spec import add_workload_args, build_workload


def _build(*argv: str):
    p = argparse.ArgumentParser()
    add_workload_args(p)
    return build_workload(p.parse_args(["--workload", "servegen", *argv]))


@pytest.fixture(scope="module")
def reqs():
    return list(_build("--rate", "5", "--duration", "1200").requests())


def test_hits_aggregate_rate_with_many_client_tenants(reqs):
    assert len(reqs) / 1200 == pytest.approx(5, rel=0.15)
    assert len({r.user for r in reqs}) >= 5
    assert all(b.arrival >= a.arrival for a, b in zip(reqs, reqs[1:]))
    assert len({r.id for r in reqs}) == len(reqs)


def test_lengths_come_from_client_pmfs(reqs):
    outs = np.array([r.true_output for r in reqs])
    assert outs.mean() > 300  # reasoning model: long outputs
    assert all(r.prompt_len >= 1 for r in reqs)


def test_deterministic_and_bad_source():
    a = [(r.arrival, r.user) for r in _build("--rate", "2", "--num-requests", "50").requests()]
    b = [(r.arrival, r.user) for r in _build("--rate", "2", "--num-requests", "50").requests()]
    assert a == b and len(a) == 50
    with pytest.raises(ConfigError, match="not found"):
        _build("--servegen", "/nope/x_client_windows.csv.gz")
