"""Deployment calibration: fit a few coefficients to a deployment's own log.

Why: kernel-level fits transfer across models but not across software stacks (scheduler and
Python overhead, CUDA graphs, driver, clocks). A step log (batch composition + measured time,
as ``sluice serve --step-log`` writes it) pins those down with a three-parameter linear fit on
top of the fitted model, so sluice becomes a twin of *that* deployment:

    step time = scale * (kernel time of the step + step_overhead + seq_overhead * sequences)

The fitted time is the step's *period* (``period_s``: start to the next step's start, less
idle waits) when the log has it - what a simulated step stands for - else the forward's
``duration_s``. The fit is least squares in seconds with an intercept, so the model reproduces
the log's total busy time: twin latencies are sums of step times, and a fit on relative error
under-predicts that sum when step times are noisy and skewed (as on a shared CPU).

A server log also has request lines (``"request": id``, see ``server/servelog.py``). From them
the *front end* - time a request spends outside engine steps - is fitted, for
``sluice bench --twin`` to add to the simulated engine latencies:

    in        = loop_wait_s + in_const_s + in_per_token_s * prompt tokens
                  loop_wait_s: mean wait of the event loop for a poke from another thread
                  (``loop_lag_s`` lines; what a request waits before it is received);
                  the rest fitted on received -> submitted
    out_first = first chunk sent - end of the first token's step  (mean)
    out_last  = response done    - end of the last token's step   (mean)

Each step line holds the :class:`BatchStats` field names plus ``duration_s``. A line
``{"model": ..., "gpu": ..., "tp": ...}`` may name the deployment; other lines without step
fields (the server's clock line) are skipped.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields, replace
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
_REQUEST_STAMPS = ("received_s", "submitted_s", "first_step_s", "last_step_s", "first_sent_s",
                   "last_sent_s")
FRONTEND_KEYS = ("loop_wait_s", "in_const_s", "in_per_token_s", "out_first_s", "out_last_s")


@dataclass
class ServerLog:
    """What a step log holds: steps (stats, forward duration, period if logged, start if
    logged), request lines as dicts, and the deployment named in a meta line."""

    stats: list[BatchStats] = field(default_factory=list)
    duration: np.ndarray = field(default_factory=lambda: np.zeros(0))
    period: np.ndarray | None = None
    start: np.ndarray | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    loop_lag: list[float] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


def read_log(path: str | Path) -> ServerLog:
    """Parse a step log; a malformed line is a TraceError naming file:line and field."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"step log {str(p)!r} not found")
    log = ServerLog()
    dur: list[float] = []
    period: list[float | None] = []
    start: list[float | None] = []
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
            if "request" in row:
                log.requests.append(row)
                continue
            if not any(k in row for k in _REQUIRED):
                if isinstance(row.get("loop_lag_s"), (int, float)):
                    log.loop_lag.append(float(row["loop_lag_s"]))
                elif "model" in row or "gpu" in row:
                    log.meta.update(row)
                continue
            for k in _REQUIRED:
                if k not in row:
                    raise TraceError(f"{p}:{i}: missing field {k!r}")
                _check_number(p, i, k, row[k])
            if row["duration_s"] <= 0:
                raise TraceError(f"{p}:{i}: field 'duration_s' must be > 0, got "
                                 f"{row['duration_s']!r}")
            for k, into in (("period_s", period), ("start_s", start)):
                if k in row:
                    _check_number(p, i, k, row[k])
                into.append(row.get(k))
            log.stats.append(BatchStats(**{k: v for k, v in row.items() if k in _STAT_FIELDS}))
            dur.append(float(row["duration_s"]))
    if len(log.stats) < 3:
        raise TraceError(f"{p}: need at least 3 step lines to calibrate, found {len(log.stats)}")
    log.duration = np.array(dur)
    if all(v is not None for v in period):
        log.period = np.maximum(np.array(period, dtype=np.float64), log.duration)
    if all(v is not None for v in start):
        log.start = np.array(start, dtype=np.float64)
    return log


def _check_number(p: Path, i: int, k: str, v: Any) -> None:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not np.isfinite(v) or v < 0:
        raise TraceError(f"{p}:{i}: field {k!r} must be a non-negative number, got {v!r}")


def read_steps(path: str | Path) -> tuple[list[BatchStats], np.ndarray, dict[str, Any]]:
    """(step stats, forward durations, meta) of a step log."""
    log = read_log(path)
    return log.stats, log.duration, log.meta


def fit_calibration(model, stats: list[BatchStats], y: np.ndarray) -> dict[str, float]:
    """Non-negative least squares in seconds for (scale, step_overhead, seq_overhead)."""
    from sluice.perf.registry import with_coeffs

    core = with_coeffs(model, scale=1.0, step_overhead=0.0, seq_overhead=0.0)
    t0 = np.array([core.step_time(s) for s in stats])
    seqs = np.array([s.prefill_seqs + s.decode_seqs for s in stats], dtype=np.float64)
    a, b, c = _nonneg_lstsq(np.stack([t0, np.ones_like(t0), seqs], axis=1), y)
    if a <= 1e-6:  # kernel time explains nothing: keep it at face value, fit the overheads
        a = 1.0
        _, b, c = _nonneg_lstsq(np.stack([np.ones_like(t0), seqs], axis=1), y - t0, (1.0,))
    scale, so, qo = a, b / a, c / a
    pred = scale * (t0 + so + qo * seqs)
    before = np.array([model.step_time(s) for s in stats])
    return {"scale": scale, "step_overhead": so, "seq_overhead": qo,
            "mape_before_pct": float(100 * np.mean(np.abs(before / y - 1))),
            "mape_after_pct": float(100 * np.mean(np.abs(pred / y - 1))),
            "busy_ratio_before": float(before.sum() / y.sum()),
            "busy_ratio_after": float(pred.sum() / y.sum())}


def _nonneg_lstsq(a: np.ndarray, y: np.ndarray, fixed: tuple[float, ...] = ()) -> list[float]:
    """Least squares with every coefficient >= 0 (a dropped one is 0): refit without the
    negative ones until none is left. ``fixed`` prefixes the result."""
    active = list(range(a.shape[1]))
    sol = np.zeros(a.shape[1])
    while active:
        x, *_ = np.linalg.lstsq(a[:, active], y, rcond=None)
        if (x >= 0).all():
            sol[active] = x
            break
        active = [j for j, v in zip(active, x) if v >= 0] if (x >= 0).any() else []
    return list(fixed) + [float(v) for v in sol]


def fit_frontend(log: ServerLog) -> dict[str, Any] | None:
    """The front-end terms from the request lines of completed streamed requests whose
    first/last token steps are in the log; None when there are none."""
    if log.period is None or log.start is None:
        return None
    end_of = {float(s): float(s + p) for s, p in zip(log.start, log.period)}
    rows = []
    for r in log.requests:
        if (r.get("reason") not in ("stop", "length") or not r.get("stream", True)
                or any(not isinstance(r.get(k), (int, float)) for k in _REQUEST_STAMPS)):
            continue
        first_end, last_end = end_of.get(r["first_step_s"]), end_of.get(r["last_step_s"])
        if first_end is None or last_end is None:
            continue
        rows.append((r["prompt_tokens"], r["submitted_s"] - r["received_s"],
                     r["first_sent_s"] - first_end, r["last_sent_s"] - last_end))
    if not rows:
        return None
    arr = np.array(rows, dtype=np.float64)
    tokens, t_in, out_first, out_last = arr.T
    if np.ptp(tokens) > 0:
        c0, c1 = _nonneg_lstsq(np.stack([np.ones_like(tokens), tokens], axis=1), t_in)
    else:  # one prompt length: a per-token slope is not identifiable
        c0, c1 = float(t_in.mean()), 0.0
    wait = float(np.mean(log.loop_lag)) if log.loop_lag else 0.0
    return {"requests": len(rows), "loop_wait_s": wait, "in_const_s": c0, "in_per_token_s": c1,
            "out_first_s": float(out_first.mean()), "out_last_s": float(out_last.mean())}


def frontend_in(frontend: dict[str, Any] | None, prompt_tokens: int) -> float:
    """Seconds from receipt to the engine's queue for a prompt of ``prompt_tokens``."""
    if not frontend:
        return 0.0
    return (frontend["loop_wait_s"] + frontend["in_const_s"]
            + frontend["in_per_token_s"] * prompt_tokens)


def calibrate(steps: str | Path, out: str | Path, model: str | None = None, gpu: str | None = None,
              tp: int | None = None) -> dict[str, Any]:
    """Fit and write a calibration file; returns what was written."""
    from sluice.perf.registry import build_perf_model

    log = read_log(steps)
    model = model or log.meta.get("model")
    gpu = gpu or log.meta.get("gpu")
    if not model or not gpu:
        raise ConfigError(f"{steps}: say which deployment the log is from: --model and --gpu, "
                          "or a line {\"model\": ..., \"gpu\": ...} in the log")
    tp = int(tp or log.meta.get("tp") or 1)
    pm = build_perf_model(model, gpu, tp=tp, kind="fitted")
    target = "period" if log.period is not None else "duration"
    y = log.period if log.period is not None else log.duration
    fit = fit_calibration(pm, log.stats, y)
    doc: dict[str, Any] = {
        "format": FORMAT, "model": model, "gpu": gpu, "tp": tp, "steps": len(log.stats),
        "target": target,
        "coeffs": {k: fit[k] for k in ("scale", "step_overhead", "seq_overhead")},
        "fit": {k: round(fit[k], 3) for k in ("mape_before_pct", "mape_after_pct",
                                                 "busy_ratio_before", "busy_ratio_after")}}
    if log.period is not None:
        doc["fit"]["mean_host_gap_ms"] = round(float((log.period - log.duration).mean()) * 1e3,
                                               3)
    frontend = fit_frontend(log)
    if frontend is not None:
        doc["frontend"] = frontend
    Path(out).write_text(json.dumps(doc, indent=1) + "\n")
    return doc


def read_calibration(path: str | Path) -> dict[str, Any]:
    """A calibration file's document, checked (coefficients and front-end terms)."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except OSError:
        raise ConfigError(f"calibration file {str(p)!r} not found") from None
    except ValueError as e:
        raise ConfigError(f"{p}: calibration file is not JSON ({e})") from None
    if (not isinstance(doc, dict) or doc.get("format") != FORMAT
            or not isinstance(doc.get("coeffs"), dict)):
        raise ConfigError(f"{p}: not a sluice calibration file (expected format {FORMAT!r})")
    fe = doc.get("frontend")
    if fe is not None and (not isinstance(fe, dict) or any(
            not isinstance(fe.get(k), (int, float)) or not math.isfinite(fe[k])
            for k in FRONTEND_KEYS)):
        raise ConfigError(f"{p}: 'frontend' needs numbers {', '.join(FRONTEND_KEYS)}")
    tr = doc.get("transport")
    if tr is not None and (not isinstance(tr, dict) or not isinstance(tr.get("rtt_s"), (int, float))
                           or not math.isfinite(tr["rtt_s"]) or tr["rtt_s"] < 0):
        raise ConfigError(f"{p}: 'transport' needs a non-negative number rtt_s")
    return doc


def load_calibration(path: str | Path, base: Coeffs) -> Coeffs:
    """``base`` with the calibrated coefficients of the file at ``path``."""
    p = Path(path)
    doc = read_calibration(p)
    allowed = {"scale", "step_overhead", "seq_overhead"}
    kw = doc["coeffs"]
    bad = sorted(set(kw) - allowed)
    if bad:
        raise ConfigError(f"{p}: unknown calibration coefficient(s) {', '.join(bad)}")
    for k, v in kw.items():
        if not isinstance(v, (int, float)) or v < 0 or (k == "scale" and v <= 0):
            raise ConfigError(f"{p}: coefficient {k!r} must be a non-negative number, got {v!r}")
    return replace(base, **{k: float(v) for k, v in kw.items()})
