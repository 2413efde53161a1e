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


def _server_log(tmp_path, n_req=40):
    """A synthetic server log with known front-end terms: in = 0.2 ms loop wait + 1 ms +
    2 us/prompt token, first chunk 3 ms and end 0.5 ms after their steps' periods end."""
    rng = random.Random(3)
    lines = [{"server_log": "sluice", "clock": "monotonic", "clock_origin": 123.0},
             {"loop_lag_s": 0.0001}, {"loop_lag_s": 0.0003}]
    t, starts = 1.0, []
    for _ in range(200):
        d = rng.randint(1, 8)
        dur = 0.002 + 0.0005 * d
        lines.append({"prefill_tokens": 0, "prefill_seqs": 0, "prefill_attn": 0, "prefill_ctx": 0,
                      "decode_seqs": d, "decode_ctx": 100 * d, "duration_s": dur, "start_s": t,
                      "period_s": dur + 0.0004})
        starts.append((t, dur + 0.0004))
        t += dur + 0.0004 + (0.01 if rng.random() < 0.1 else 0.0)  # sometimes idle between
    for i in range(n_req):
        p = rng.randint(10, 500)
        rec = rng.uniform(0, 1)
        (fs, fp), (ls, lp) = sorted(rng.sample(starts, 2))
        lines.append({"request": i, "stream": True, "reason": "length", "prompt_tokens": p,
                      "output_tokens": 9, "received_s": rec,
                      "submitted_s": rec + 0.001 + 2e-6 * p, "enqueued_s": rec + 0.002,
                      "first_step_s": fs, "last_step_s": ls, "first_sent_s": fs + fp + 0.003,
                      "last_sent_s": ls + lp + 0.0005})
    lines.append({"request": 99, "stream": True, "reason": "abort", "prompt_tokens": 5,
                  "received_s": 0.0, "submitted_s": 9.0})  # not completed: ignored
    f = tmp_path / "server.jsonl"
    f.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return f


def test_frontend_terms_are_recovered_from_a_server_log(tmp_path) -> None:
    from sluice.perf.calibrate import frontend_in, read_calibration

    out = tmp_path / "cal.json"
    doc = calibrate(_server_log(tmp_path), out, model="llama-3.1-8b", gpu="h100")
    assert doc["target"] == "period"
    assert doc["fit"]["mean_host_gap_ms"] == pytest.approx(0.4)
    fe = doc["frontend"]
    assert fe["requests"] == 40
    assert fe["loop_wait_s"] == pytest.approx(2e-4)
    assert fe["in_const_s"] == pytest.approx(1e-3)
    assert fe["in_per_token_s"] == pytest.approx(2e-6)
    assert fe["out_first_s"] == pytest.approx(3e-3)
    assert fe["out_last_s"] == pytest.approx(5e-4)
    assert frontend_in(fe, 100) == pytest.approx(2e-4 + 1e-3 + 2e-4)
    assert read_calibration(out)["frontend"] == fe


def test_fit_keeps_total_busy_time_under_noise(tmp_path) -> None:
    """Multiplicative, skewed noise: the fit in seconds still sums to the logged busy time."""
    rng = random.Random(5)
    truth = with_coeffs(build_perf_model("llama-3.1-8b", "h100"), scale=1.3, step_overhead=4e-3,
                        seq_overhead=20e-6)
    lines = []
    for _ in range(300):
        d = rng.randint(1, 128)
        s = BatchStats(decode_seqs=d, decode_ctx=d * rng.randint(10, 3000))
        row = {k: getattr(s, k) for k in ("prefill_tokens", "prefill_seqs", "prefill_attn",
                                          "prefill_ctx", "decode_seqs", "decode_ctx")}
        row["duration_s"] = truth.step_time(s) * rng.lognormvariate(0, 0.5)
        lines.append(json.dumps(row))
    f = tmp_path / "noisy.jsonl"
    f.write_text("\n".join(lines) + "\n")
    doc = calibrate(f, tmp_path / "c.json", model="llama-3.1-8b", gpu="h100")
    assert doc["target"] == "duration" and "frontend" not in doc
    assert doc["fit"]["busy_ratio_after"] == pytest.approx(1.0, abs=1e-3)


def test_bad_frontend_or_transport_in_a_calibration_file(tmp_path) -> None:
    from sluice.perf.calibrate import read_calibration

    bad = tmp_path / "x.json"
    coeffs = {"scale": 1.0, "step_overhead": 0.0, "seq_overhead": 0.0}
    bad.write_text(json.dumps({"format": "sluice-calibration/1", "coeffs": coeffs,
                               "frontend": {"in_const_s": 0.001}}))
    with pytest.raises(ConfigError, match="frontend"):
        read_calibration(bad)
    bad.write_text(json.dumps({"format": "sluice-calibration/1", "coeffs": coeffs,
                               "transport": {"rtt_s": -1}}))
    with pytest.raises(ConfigError, match="transport"):
        read_calibration(bad)
