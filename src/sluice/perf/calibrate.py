"""Deployment calibration: fit a few coefficients to a deployment's own step log.

Why: kernel-level fits transfer across models but not across software stacks (scheduler and
Python overhead, CUDA graphs, driver, clocks). A step log (batch composition + measured
duration, as the torch engine writes it) pins those down with a three-parameter linear fit on
top of the fitted model, so sluice becomes a twin of *that* deployment:

    duration = scale * (kernel time of the step + step_overhead + seq_overhead * sequences)

Each JSONL line is one step: the :class:`BatchStats` field names plus ``duration_s``.
A line ``{"model": ..., "gpu": ..., "tp": ...}`` (no ``duration_s``) may name the deployment.
"""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from sluice.core.plan import BatchStats
from sluice.errors import ConfigError, TraceError
from sluice.perf.roofline import Coeffs

FORMAT = "sluice-calibration/1"
_STAT_FIELDS = {f.name for f in fields(BatchStats)}
_REQUIRED = ("prefill_tokens", "prefill_seqs", "prefill_attn", "prefill_ctx", "decode_seqs",
             "decode_ctx", "duration_s")


def read_steps(path: str | Path) -> tuple[list[BatchStats], np.ndarray, dict[str, Any]]:
    """Parse a step log; a malformed line is a TraceError naming file:line and field."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"step log {str(p)!r} not found")
    stats, dur, meta = [], [], {}
    with p.open() as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise TraceError(f"{p}:{i}: not JSON ({e})") from None
            if not isinstance(row, dict):
                raise TraceError(f"{p}:{i}: expected a JSON object")
            if "duration_s" not in row and ("model" in row or "gpu" in row):
                meta.update(row)
                continue
            for k in _REQUIRED:
                if k not in row:
                    raise TraceError(f"{p}:{i}: missing field {k!r}")
                v = row[k]
                if not isinstance(v, (int, float)) or isinstance(v, bool) or not np.isfinite(v) or v < 0:
                    raise TraceError(f"{p}:{i}: field {k!r} must be a non-negative number, got {v!r}")
            if row["duration_s"] <= 0:
                raise TraceError(f"{p}:{i}: field 'duration_s' must be > 0, got {row['duration_s']!r}")
            stats.append(BatchStats(**{k: v for k, v in row.items() if k in _STAT_FIELDS}))
            dur.append(float(row["duration_s"]))
    if len(stats) < 3:
        raise TraceError(f"{p}: need at least 3 step lines to calibrate, found {len(stats)}")
    return stats, np.array(dur), meta


def fit_calibration(model, stats: list[BatchStats], dur: np.ndarray) -> dict[str, float]:
    """Least squares on relative error for (scale, step_overhead, seq_overhead)."""
    from sluice.perf.registry import with_coeffs

    core = with_coeffs(model, scale=1.0, step_overhead=0.0, seq_overhead=0.0)
    t0 = np.array([core.step_time(s) for s in stats])
    seqs = np.array([s.prefill_seqs + s.decode_seqs for s in stats], dtype=np.float64)
    a = np.stack([t0, np.ones_like(t0), seqs], axis=1) / dur[:, None]
    sol, *_ = np.linalg.lstsq(a, np.ones_like(dur), rcond=None)
    scale = float(sol[0]) if sol[0] > 1e-6 else 1.0
    so, qo = max(float(sol[1]), 0.0) / scale, max(float(sol[2]), 0.0) / scale
    pred = scale * (t0 + so + qo * seqs)
    before = np.array([model.step_time(s) for s in stats])
    return {"scale": scale, "step_overhead": so, "seq_overhead": qo,
            "mape_before_pct": float(100 * np.mean(np.abs(before / dur - 1))),
            "mape_after_pct": float(100 * np.mean(np.abs(pred / dur - 1)))}


def calibrate(steps: str | Path, out: str | Path, model: str | None = None, gpu: str | None = None,
              tp: int | None = None) -> dict[str, Any]:
    """Fit and write a calibration file; returns what was written."""
    from sluice.perf.registry import build_perf_model

    stats, dur, meta = read_steps(steps)
    model = model or meta.get("model")
    gpu = gpu or meta.get("gpu")
    if not model or not gpu:
        raise ConfigError(f"{steps}: say which deployment the log is from: --model and --gpu, "
                          "or a line {\"model\": ..., \"gpu\": ...} in the log")
    tp = int(tp or meta.get("tp") or 1)
    pm = build_perf_model(model, gpu, tp=tp, kind="fitted")
    fit = fit_calibration(pm, stats, dur)
    doc = {"format": FORMAT, "model": model, "gpu": gpu, "tp": tp, "steps": len(stats),
           "coeffs": {k: fit[k] for k in ("scale", "step_overhead", "seq_overhead")},
           "fit": {k: round(fit[k], 3) for k in ("mape_before_pct", "mape_after_pct")}}
    Path(out).write_text(json.dumps(doc, indent=1) + "\n")
    return doc


def load_calibration(path: str | Path, base: Coeffs) -> Coeffs:
    """``base`` with the calibrated coefficients of the file at ``path``."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except OSError:
        raise ConfigError(f"calibration file {str(p)!r} not found") from None
    except ValueError as e:
        raise ConfigError(f"{p}: calibration file is not JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("coeffs"), dict):
        raise ConfigError(f"{p}: not a sluice calibration file (expected format {FORMAT!r})")
    allowed = {"scale", "step_overhead", "seq_overhead"}
    kw = doc["coeffs"]
    bad = sorted(set(kw) - allowed)
    if bad:
        raise ConfigError(f"{p}: unknown calibration coefficient(s) {', '.join(bad)}")
    for k, v in kw.items():
        if not isinstance(v, (int, float)) or v < 0 or (k == "scale" and v <= 0):
            raise ConfigError(f"{p}: coefficient {k!r} must be a non-negative number, got {v!r}")
    return replace(base, **{k: float(v) for k, v in kw.items()})
