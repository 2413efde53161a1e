"""WeightedSample: the statistics of the expanded sample, however it was recorded."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.metrics.sample import WeightedSample, equal_runs, itl_sample

values = st.lists(st.floats(0.0, 10.0, allow_nan=False), min_size=1, max_size=40)
counts = st.lists(st.integers(1, 50), min_size=40, max_size=40)


@settings(max_examples=200, deadline=None)
@given(values, counts, st.sampled_from([0, 1, 25, 50, 90, 99, 100]))
def test_statistics_match_the_expanded_sample(vals, cnts, q):
    expanded = np.repeat(np.array(vals), cnts[: len(vals)])
    s = WeightedSample.of(np.array(vals), np.array(cnts[: len(vals)]))
    assert s.size == len(expanded)
    assert s.percentile(q) == np.percentile(expanded, q)
    assert np.isclose(s.mean(), expanded.mean(), rtol=1e-12, atol=1e-12)
    assert np.isclose(s.std(), expanded.std(), rtol=1e-9, atol=1e-9)
    assert np.array_equal(s.expand(), np.sort(expanded))


@settings(max_examples=100, deadline=None)
@given(values, st.integers(1, 8), st.randoms(use_true_random=False))
def test_runs_and_one_by_one_give_identical_bits(vals, batch, rnd):
    """A fast-forwarded run records (gap, batch); step by step records the gap batch times,
    in any order: both canonical forms, and so every statistic, are bit-identical."""
    one_by_one = list(np.repeat(np.array(vals), batch))
    rnd.shuffle(one_by_one)
    a = WeightedSample.of(np.array(one_by_one))
    b = WeightedSample.of(np.array(vals), np.full(len(vals), batch))
    assert np.array_equal(a.values, b.values) and np.array_equal(a.counts, b.counts)
    for q in (50, 90, 99):
        assert a.percentile(q) == b.percentile(q)
    assert a.mean() == b.mean() and a.std() == b.std()


def test_nan_values_are_dropped():
    s = WeightedSample.of(np.array([1.0, np.nan, 3.0]))
    assert s.size == 2 and s.percentile(50) == 2.0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from([0.5, 1.0, 2.0, np.nan]), max_size=60))
def test_equal_runs_expand_back_to_the_input(xs):
    """The run-length encoding itl_sample applies to one-by-one ITLs loses nothing."""
    x = np.array(xs, dtype=np.float64)
    v, c = equal_runs(x)
    assert c.dtype == np.int64 and (c > 0).all()
    assert np.array_equal(np.repeat(v, c), x, equal_nan=True)
    assert np.all(v[1:] != v[:-1]) or np.isnan(v).any()


def test_itl_sample_merges_all_three_kinds_of_record():
    """One-by-one gaps, a fast-forwarded run's step ends (gaps = differences, each seen by
    the batch) and compacted (gaps, counts) give the sample of every gap written out."""
    class Sched:
        itls = [0.1, 0.1, 0.2]
        itl_runs = [(np.array([1.0, 1.5, 2.5]), 3),  # gaps 0.5, 1.0, three requests each
                    (np.array([0.1, 0.7]), np.array([2, 1])),  # compacted: 0.1 x2, 0.7 x1
                    (np.array([4.0, 4.25]), 2)]  # gap 0.25 twice (not 4.0 - 2.5: other run)
    s = itl_sample(Sched())
    expected = [0.1] * 4 + [0.2, 0.7] + [0.5] * 3 + [1.0] * 3 + [0.25] * 2
    assert np.array_equal(s.expand(), np.sort(expected))
