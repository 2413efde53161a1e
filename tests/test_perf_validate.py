"""Pieces of `sluice perf validate` that are cheap to run: the split, KV and step-level checks."""

from __future__ import annotations

from sluice.perf.fit import load_tables
from sluice.perf.validate import TEST_MODELS, _split, kv_capacity, splitwise_steps


def test_split_is_disjoint_by_model_and_holds_out_each_named_model() -> None:
    train, test = _split(load_tables())
    for op in train:
        tr, te = set(train[op]["model"]), set(test[op]["model"])
        assert not tr & te, op
    held = set().union(*(set(t["model"]) for t in test.values()))
    assert TEST_MODELS <= held
    assert any(str(m).startswith("grid") for m in held)


def test_kv_capacity_report_within_5_percent() -> None:
    r = kv_capacity()
    assert len(r["runs"]) >= 9 and r["max_abs_error_pct"] < 5


def test_splitwise_check_reports_both_phases() -> None:
    r = splitwise_steps()
    assert r["n"] > 100
    assert r["prefill"]["mape"] is not None and r["decode"]["mape"] is not None
