"""Calibration recovers a deployment's overheads from its step log and plugs into the registry."""

from __future__ import annotations

import json
import random

import pytest

from sluice.core.plan import BatchStats
from sluice.errors import ConfigError, TraceError
from sluice.perf.calibrate import calibrate
from sluice.perf.registry import build_perf_model, with_coeffs


def _log(tmp_path, scale=1.3, step=4e-3, seq=20e-6, n=60, meta=True):
    truth = with_coeffs(build_perf_model("llama-3.1-8b", "h100"), scale=scale, step_overhead=step,
                        seq_overhead=seq)
    rng = random.Random(1)
    lines = [json.dumps({"model": "llama-3.1-8b", "gpu": "h100", "tp": 1})] if meta else []
    for _ in range(n):
        p = rng.choice([0, 0, 128, 512, 2048])
        d = rng.randint(0 if p else 1, 128)
        s = BatchStats(prefill_tokens=p, prefill_seqs=1 if p else 0, prefill_attn=p * (p + 1) / 2,
                       decode_seqs=d, decode_ctx=d * rng.randint(10, 3000))
        row = {k: getattr(s, k) for k in ("prefill_tokens", "prefill_seqs", "prefill_attn",
                                          "prefill_ctx", "decode_seqs", "decode_ctx")}
        row["duration_s"] = truth.step_time(s)
        lines.append(json.dumps(row))
    f = tmp_path / "steps.jsonl"
    f.write_text("\n".join(lines) + "\n")
    return f, truth


def test_calibration_recovers_coefficients(tmp_path) -> None:
    f, truth = _log(tmp_path)
    out = tmp_path / "cal.json"
    doc = calibrate(f, out)
    assert doc["coeffs"]["scale"] == pytest.approx(1.3, rel=1e-3)
    assert doc["coeffs"]["step_overhead"] == pytest.approx(4e-3, rel=1e-2)
    assert doc["fit"]["mape_after_pct"] < 0.5 < doc["fit"]["mape_before_pct"]
    cal = build_perf_model("llama-3.1-8b", "h100", kind=f"calibrated:{out}")
    s = BatchStats(decode_seqs=40, decode_ctx=40 * 700)
    assert cal.step_time(s) == pytest.approx(truth.step_time(s), rel=1e-3)
    via_arg = build_perf_model("llama-3.1-8b", "h100", calibration=str(out))
    assert via_arg.step_time(s) == cal.step_time(s)


def test_calibration_needs_a_deployment(tmp_path) -> None:
    f, _ = _log(tmp_path, meta=False)
    with pytest.raises(ConfigError, match="--model"):
        calibrate(f, tmp_path / "c.json")
    calibrate(f, tmp_path / "c.json", model="llama-3.1-8b", gpu="h100")


def test_bad_step_lines_name_file_line_and_field(tmp_path) -> None:
    f = tmp_path / "s.jsonl"
    f.write_text('{"prefill_tokens": 1, "prefill_seqs": 1, "prefill_attn": 1, "prefill_ctx": 0,'
                 ' "decode_seqs": 0, "duration_s": 0.01}\n')
    with pytest.raises(TraceError, match=r"s.jsonl:1: missing field 'decode_ctx'"):
        calibrate(f, tmp_path / "c.json", model="llama-3.1-8b", gpu="h100")
    f.write_text("not json\n")
    with pytest.raises(TraceError, match="s.jsonl:1"):
        calibrate(f, tmp_path / "c.json", model="llama-3.1-8b", gpu="h100")


def test_bad_calibration_file(tmp_path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text('{"format": "sluice-calibration/1", "coeffs": {"scal": 1}}')
    with pytest.raises(ConfigError, match="scal"):
        build_perf_model("llama-3.1-8b", "h100", kind=f"calibrated:{bad}")
    with pytest.raises(ConfigError, match="not found"):
        build_perf_model("llama-3.1-8b", "h100", kind=f"calibrated:{tmp_path / 'nope.json'}")
