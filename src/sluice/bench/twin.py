"""``sluice bench --twin``: simulate the benchmarked deployment and set the two side by side.

Why: the simulator is only worth trusting where it has been checked against the real engine.
A sluice server describes itself (``GET /sluice/config``: policy, scheduler knobs, KV blocks,
the model's ``config.json``) and writes a step log (``--step-log``); the twin calibrates the
performance model on that log (``sluice perf calibrate``), replays the *same* workload (same
flags, same seed) through a simulated replica built from the same description, and reports
measured vs simulated for the headline metrics.
"""

from __future__ import annotations

import argparse
import math
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
             goodput: dict[str, float]) -> dict[str, Any]:
    """Calibrate on the server's step log and simulate the workload; returns the simulated
    summary plus the calibration document."""
    from sluice.perf.calibrate import calibrate
    from sluice.sim.runner import SimConfig, run_simulation
    from sluice.workload.spec import build_workload

    step_log = args.step_log or deployment.get("step_log")
    if not step_log or not Path(step_log).is_file():
        raise ConfigError("--twin needs the server's step log: start `sluice serve` with "
                          "--step-log F on this machine, or pass --step-log F here")
    gpu = args.twin_gpu or ("cpu" if deployment.get("device", "cpu") == "cpu" else None)
    if gpu is None:
        raise ConfigError("--twin: the server runs on a GPU; say which with --twin-gpu NAME")
    model = deployment["model_config"]
    out = Path(args.out) if args.out else Path(step_log).parent
    out.mkdir(parents=True, exist_ok=True)
    cal_path = out / "twin-calibration.json"
    doc = calibrate(step_log, cal_path, model=model, gpu=gpu)
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
    return {"simulated": result.summary, "calibration": doc}


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
