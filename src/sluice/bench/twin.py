"""``sluice bench --twin``: simulate the benchmarked deployment and set the two side by side.

Why: the simulator is only worth trusting where it has been checked against the real engine.
A sluice server describes itself (``GET /sluice/config``: policy, scheduler knobs, KV blocks,
the model's ``config.json``) and writes a step log (``--step-log``); the twin calibrates the
performance model on that log (``sluice perf calibrate``), replays the *same* workload (same
flags, same seed) through a simulated replica built from the same description, and reports
measured vs simulated for the headline metrics.

The simulator prices engine steps only. A request also spends time in the server's front end
(HTTP, validation, hand-off to the engine thread, streaming back), which the server logs and
the calibration fits from those server-side stamps alone; the twin adds it to each simulated
request: TTFT gains ``in + out_first``, E2E ``in + out_last``. What happens before the server
sees a request and after it handed the response to the socket (client stack, transport) is
one round trip of ``GET /health`` timed during the run (``bench/server_stats.py``), added to
both. The calibration file keeps that round trip too, so ``--twin-calibration F`` predicts a
run entirely from another run's measurements (held out).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from sluice.errors import ConfigError

COMPARED = [("Mean TTFT (ms)", "mean_ttft_ms"), ("Median TTFT (ms)", "median_ttft_ms"),
            ("P99 TTFT (ms)", "p99_ttft_ms"), ("Mean TPOT (ms)", "mean_tpot_ms"),
            ("Mean ITL (ms)", "mean_itl_ms"), ("Mean E2EL (ms)", "mean_e2el_ms"),
            ("P90 E2EL (ms)", "p90_e2el_ms"), ("Output tok/s", "output_throughput"),
            ("Completed", "completed"), ("Preemptions", "preemptions")]


def fetch_deployment(base_url: str) -> dict[str, Any]:
    root = base_url.rstrip("/")
    root = root[:-3] if root.endswith("/v1") else root
    try:
        r = httpx.get(root + "/sluice/config", timeout=10)
    except httpx.HTTPError as exc:
        raise ConfigError(f"--twin: cannot reach {root}/sluice/config ({exc})") from None
    if r.status_code != 200:
        raise ConfigError(f"--twin needs a sluice server (GET {root}/sluice/config answered "
                          f"{r.status_code})")
    return r.json()


def run_twin(args: argparse.Namespace, deployment: dict[str, Any],
             goodput: dict[str, float], rtts: list[float] | None = None) -> dict[str, Any]:
    """Calibrate on the server's step log (or read ``--twin-calibration``) and simulate the
    workload; returns the simulated summary with and without the front end, plus the
    calibration document."""
    from sluice.sim.runner import SimConfig, run_simulation
    from sluice.workload.spec import build_workload

    gpu = args.twin_gpu or ("cpu" if deployment.get("device", "cpu") == "cpu" else None)
    if gpu is None:
        raise ConfigError("--twin: the server runs on a GPU; say which with --twin-gpu NAME")
    model = deployment["model_config"]
    cal_path, doc = _calibration(args, deployment, model, gpu, rtts or [])
    sc = deployment["scheduler"]
    cfg = SimConfig(model=model, gpu=gpu, policy=deployment["policy"],
                    policy_options=deployment.get("policy_options") or {}, seed=args.seed,
                    max_num_seqs=sc["max_num_seqs"],
                    max_num_batched_tokens=sc["max_num_batched_tokens"],
                    enable_chunked_prefill=sc["enable_chunked_prefill"],
                    enable_prefix_caching=sc["enable_prefix_caching"],
                    preemption_mode=sc["preemption_mode"],
                    kv_reservation=sc["kv_reservation"],
                    long_prefill_token_threshold=sc["long_prefill_token_threshold"],
                    block_size=sc["block_size"], num_gpu_blocks=deployment["num_gpu_blocks"],
                    max_model_len=sc["max_model_len"], perf_kind=f"calibrated:{cal_path}",
                    goodput=goodput)
    workload = build_workload(args, max_model_len=sc["max_model_len"])
    result = run_simulation(cfg, workload)
    rtt = (doc.get("transport") or {}).get("rtt_s", 0.0)
    return {"simulated": with_frontend(result.summary, result.records, result.itls,
                                       doc.get("frontend"), goodput, rtt),
            "simulated_engine": result.summary, "calibration": doc}


def _calibration(args: argparse.Namespace, deployment: dict[str, Any], model: str,
                 gpu: str, rtts: list[float]) -> tuple[Path, dict[str, Any]]:
    """(calibration file, its document): the given one, or fitted now on the step log plus
    this run's transport round trips."""
    from sluice.perf.calibrate import calibrate, read_calibration

    if getattr(args, "twin_calibration", None):
        path = Path(args.twin_calibration)
        return path, read_calibration(path)
    step_log = args.step_log or deployment.get("step_log")
    if not step_log or not Path(step_log).is_file():
        raise ConfigError("--twin needs the server's step log: start `sluice serve` with "
                          "--step-log F on this machine, or pass --step-log F here")
    out = Path(args.out) if args.out else Path(step_log).parent
    out.mkdir(parents=True, exist_ok=True)
    path = out / "twin-calibration.json"
    doc = calibrate(step_log, path, model=model, gpu=gpu)
    if rtts:
        doc["transport"] = {"probes": len(rtts), "rtt_s": sum(rtts) / len(rtts)}
        path.write_text(json.dumps(doc, indent=1) + "\n")
    return path, doc


def with_frontend(summary: dict[str, Any], records: list, itls: Any,
                  frontend: dict[str, Any] | None, goodput: dict[str, float],
                  rtt: float = 0.0) -> dict[str, Any]:
    """``summary`` recomputed with each completed request's time outside the engine added:
    its first token ``rtt + in + out_first`` later, its end ``rtt + in + out_last`` later."""
    from sluice.metrics.summary import summarize
    from sluice.perf.calibrate import frontend_in

    if not frontend and not rtt:
        return dict(summary)
    out_first = frontend["out_first_s"] if frontend else 0.0
    out_last = frontend["out_last_s"] if frontend else 0.0
    shifted = []
    for r in records:
        if r.completed:
            t_in = rtt + frontend_in(frontend, r.prompt_tokens)
            r = replace(r, first_token=r.first_token + t_in + out_first,
                        finish=r.finish + t_in + out_last)
        shifted.append(r)
    return {**summary, **summarize(shifted, itls, goodput or None)}


def describe_calibration(doc: dict[str, Any]) -> str:
    """One paragraph: what the calibration fitted (step model and front end)."""
    c, fit = doc["coeffs"], doc.get("fit", {})
    lines = [f"step model ({doc.get('target', 'duration')}, {doc.get('steps', '?')} steps): "
             f"scale {c['scale']:.3f}, step overhead {c['step_overhead'] * 1e3:.3f} ms, "
             f"per sequence {c['seq_overhead'] * 1e6:.1f} us; MAPE "
             f"{fit.get('mape_after_pct', float('nan')):.1f}%, busy time x"
             f"{fit.get('busy_ratio_after', float('nan')):.3f}"]
    fe = doc.get("frontend")
    if fe:
        lines.append(f"front end ({fe['requests']} requests): in {fe['loop_wait_s'] * 1e3:.3f} ms"
                     f" loop wait + {fe['in_const_s'] * 1e3:.3f} ms"
                     f" + {fe['in_per_token_s'] * 1e6:.3f} us/prompt token, out first "
                     f"{fe['out_first_s'] * 1e3:.3f} ms, out last {fe['out_last_s'] * 1e3:.3f} ms")
    else:
        lines.append("front end: none in the log (simulated latencies are engine-only)")
    tr = doc.get("transport")
    if tr:
        lines.append(f"transport: GET /health round trip {tr['rtt_s'] * 1e3:.3f} ms "
                     f"({tr['probes']} probes)")
    return "\n".join(lines)


def side_by_side(measured: dict[str, Any], simulated: dict[str, Any]) -> list[tuple]:
    """(label, measured, simulated, relative difference of simulated vs measured)."""
    rows = []
    for label, key in COMPARED:
        m, s = measured.get(key), simulated.get(key)
        diff = None
        if isinstance(m, (int, float)) and isinstance(s, (int, float)) and m and \
                not math.isnan(m) and not math.isnan(s):
            diff = (s - m) / m
        rows.append((label, m, s, diff))
    return rows


def print_side_by_side(measured: dict[str, Any], simulated: dict[str, Any], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in ("metric", "measured", "simulated", "sim vs real"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for label, m, s, diff in side_by_side(measured, simulated):
        table.add_row(label, _fmt(m), _fmt(s), "-" if diff is None else f"{diff:+.1%}")
    Console().print(table)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)
