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


def test_named_model_mape_excludes_grid_shapes() -> None:
    from sluice.perf.validate import _by_source, _summarise

    # (op class, gpu, model, predicted, measured): grid rows 50% off, named rows 10% / 20% off
    rows = [("gemm", "h100", "grid", 1.5, 1.0)] * 3 + [("gemm", "h100", "llama-2-70b-hf", 1.1, 1.0)] * 2 \
        + [("prefill_attn", "a100-80g", "qwen3-32b", 0.8, 1.0)] * 2 \
        + [("prefill_attn", "a100-80g", "grid", 2.0, 1.0)]
    s = _summarise(rows)
    nm = s["named_models"]
    assert s["overall"]["n"] == len(rows)  # the all-rows overall is unchanged
    assert nm["n"] == sum(v["n"] for k, v in s["by_model"].items() if k != "grid") == 4
    assert abs(nm["mape"] - 15.0) < 1e-9
    assert nm["by_op"] == {"gemm": {"mape": 10.0, "n": 2}, "prefill_attn": {"mape": 20.0, "n": 2}}
    src = _by_source(rows)
    assert src["h100"] == {"named_models": {"mape": 10.0, "n": 2}, "grid_shapes": {"mape": 50.0, "n": 3}}
    assert src["a100-80g"]["grid_shapes"] == {"mape": 100.0, "n": 1}


def test_heldout_report_has_named_model_line_over_the_named_models_rows() -> None:
    from sluice.perf.validate import heldout

    held, unseen, _ = heldout(load_tables())  # refits on the training split (~6 s)
    for r in (held, unseen):
        nm = r["named_models"]
        assert nm["n"] == sum(v["n"] for k, v in held["by_model"].items() if k != "grid")
        assert sum(v["n"] for v in nm["by_op"].values()) == nm["n"] < r["overall"]["n"]
        assert sum(v["named_models"]["n"] + v["grid_shapes"]["n"]
                   for v in r["by_gpu_source"].values()) == r["overall"]["n"]
