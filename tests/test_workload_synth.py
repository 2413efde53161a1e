"""Arrival processes hit their target rate and CV; lengths and streams are deterministic."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.errors import ConfigError
from sluice.workload.lengths import parse_length
from sluice.workload.synth import (Constant, Diurnal, GammaArrivals, OnOff, Poisson, Stages,
                                   WeibullArrivals, parse_arrival, weibull_shape_for_cv)

N = 100_000


def _rate_cv(proc, n: int = N, seed: int = 7) -> tuple[float, float]:
    t = np.fromiter(itertools.islice(proc.times(np.random.default_rng(seed)), n), float, n)
    gaps = np.diff(np.concatenate([[0.0], t]))
    return 1.0 / gaps.mean(), gaps.std() / gaps.mean()


@pytest.mark.parametrize("rate,cv", [(5.0, 3.0), (20.0, 0.5), (1.0, 1.0)])
def test_gamma_hits_rate_and_cv_within_5pct_over_100k(rate, cv):
    r, c = _rate_cv(GammaArrivals(rate, cv))
    assert r == pytest.approx(rate, rel=0.05)
    assert c == pytest.approx(cv, rel=0.05)


@pytest.mark.parametrize("rate,cv", [(4.0, 2.0), (10.0, 0.7)])
def test_weibull_hits_rate_and_cv(rate, cv):
    r, c = _rate_cv(WeibullArrivals(rate, cv))
    assert r == pytest.approx(rate, rel=0.05)
    assert c == pytest.approx(cv, rel=0.05)


def test_weibull_shape_one_is_exponential():
    assert weibull_shape_for_cv(1.0) == pytest.approx(1.0, rel=1e-6)


def test_poisson_constant_onoff_diurnal_mean_rates():
    assert _rate_cv(Poisson(8.0))[0] == pytest.approx(8.0, rel=0.03)
    t = list(itertools.islice(Constant(8.0).times(np.random.default_rng(0)), 1000))
    assert t[0] == 0.0 and np.diff(t) == pytest.approx(np.full(999, 0.125))
    r, c = _rate_cv(OnOff(30.0, 10.0, 20.0), 50_000)
    assert r == pytest.approx(10.0, rel=0.1) and c > 1.5  # bursty
    t = list(itertools.islice(Diurnal(2.0, 0.8, period=1000.0).times(np.random.default_rng(1)),
                              20_000))
    assert len(t) / t[-1] == pytest.approx(2.0, rel=0.05)


def test_stages_are_piecewise_and_finite():
    t = list(Stages(((10.0, 100.0), (50.0, 100.0)), kind="constant").times(
        np.random.default_rng(0)))
    assert sum(x < 100 for x in t) == pytest.approx(1000, abs=1)
    assert sum(x >= 100 for x in t) == pytest.approx(5000, abs=1)
    assert max(t) < 200


def test_same_seed_same_stream():
    a = list(itertools.islice(GammaArrivals(3, 2).times(np.random.default_rng(42)), 5000))
    b = list(itertools.islice(GammaArrivals(3, 2).times(np.random.default_rng(42)), 5000))
    assert a == b


@settings(max_examples=25, deadline=None)
@given(rate=st.floats(0.01, 1000), cv=st.floats(0.1, 10), seed=st.integers(0, 2**32 - 1),
       kind=st.sampled_from(["poisson", "gamma", "weibull", "constant", "onoff", "diurnal"]))
def test_arrivals_are_non_decreasing_and_finite(rate, cv, seed, kind):
    t = list(itertools.islice(parse_arrival(kind, rate, cv).times(np.random.default_rng(seed)),
                              300))
    assert all(math.isfinite(x) for x in t)
    assert all(b >= a for a, b in zip(t, t[1:]))


def test_parse_errors_are_config_errors():
    with pytest.raises(ConfigError, match="needs --rate"):
        parse_arrival("gamma", None, 2.0)
    with pytest.raises(ConfigError, match="unknown arrival"):
        parse_arrival("zipf", 1.0, None)
    with pytest.raises(ConfigError, match="rate must be > 0"):
        list(itertools.islice(Poisson(0.0).times(np.random.default_rng(0)), 1))
    with pytest.raises(ConfigError, match="bad length spec"):
        parse_length("lognormal:abc")


def test_length_distributions():
    rng = np.random.default_rng(3)
    assert set(parse_length("fixed:128").sample(rng, 10).tolist()) == {128}
    u = parse_length("uniform:5:9").sample(rng, 1000)
    assert u.min() >= 5 and u.max() <= 9
    ln = parse_length("lognormal:1000:0.5").sample(rng, 100_000)
    assert ln.mean() == pytest.approx(1000, rel=0.02) and ln.min() >= 1
