"""Simulator speed: requests simulated per wall-second and peak memory.

Cases (each in its own subprocess, so peak RSS is that case's alone):
  azure-conv-10k   the first 10,000 requests of the bundled Azure 2023 conversation trace
  azure-conv       all 19,366 requests
  poisson-10k/100k synthetic Poisson arrivals, ShareGPT lengths, at a rate the GPU sustains
Each case runs with exact fast-forward on, and (for the 10k cases) once more with it off in the
same process: the ratio is the fast-forward speed-up, measured on the same machine state.
"wall s" times the simulation after a 10-request warm-up run that pays the imports (numpy,
the simulator; about 0.3 s, printed apart as "warmup s") - a command-line run pays both.
Deployment: Llama-3.1-8B on one H100, policy vllm (the `sluice simulate` default).

    .venv/bin/python benchmarks/sim_speed.py [--quick]

Reference: Vidur needs ~11 ms of wall time per simulated request on this machine kind
(10,000 Azure-conversation requests in about 3 minutes).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

CASES = {
    "azure-conv-10k": ["--trace", "azure-conv", "--num-requests", "10000"],
    "azure-conv": ["--trace", "azure-conv"],
    "poisson-10k": ["--workload", "poisson", "--rate", "4", "--num-requests", "10000"],
    "poisson-100k": ["--workload", "poisson", "--rate", "4", "--num-requests", "100000"],
}
VIDUR_MS_PER_REQUEST = 11.0


def _dump(summary: dict) -> str:
    from sluice.cli import _json_default

    return json.dumps(summary, sort_keys=True, default=_json_default)


def run_case(flags: list[str], baseline: bool) -> dict:
    """Runs inside the child: simulate once (and once without fast-forward if asked)."""
    from sluice.cli import build_parser, _run_one

    t0 = time.perf_counter()
    _run_one(build_parser().parse_args(["simulate", "--json", *flags[:2],
                                        "--num-requests", "10"]))
    out_warm = time.perf_counter() - t0  # imports (numpy, the simulator) and a 10-request run
    args = build_parser().parse_args(["simulate", "--json", *flags])
    t0, c0 = time.perf_counter(), time.process_time()
    res = _run_one(args)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    out = {"requests": res.summary["num_requests"], "wall_s": wall, "cpu_s": cpu,
           "req_per_s": res.summary["num_requests"] / wall,
           "ms_per_request": 1000 * wall / res.summary["num_requests"],
           "steps": res.summary["steps"], "ff_steps": res.loop_stats["fast_forward_steps"],
           "warmup_s": out_warm}
    if baseline:
        args.fast_forward = False
        t0 = time.perf_counter()
        slow = _run_one(args)
        out["no_ff_wall_s"] = time.perf_counter() - t0
        out["ff_speedup"] = out["no_ff_wall_s"] / wall
        out["identical_without_ff"] = _dump(slow.summary) == _dump(res.summary)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="only the 10k cases")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(run_case(CASES[a.child], a.baseline)))
        return 0
    names = [n for n in CASES if not a.quick or n.endswith("10k")]
    print("wall s: the simulation, after imports and a 10-request warm-up (shown apart); "
          "cpu s: this process's CPU time over the same span (less sensitive to other tenants)")
    print(f"{'case':16} {'requests':>9} {'wall s':>8} {'cpu s':>7} {'warmup s':>9} {'req/s':>8} "
          f"{'ms/req':>7} {'vs Vidur':>9} {'FF x':>6} {'peak MiB':>9}")
    for name in names:
        cmd = [sys.executable, __file__, "--child", name]
        if name.endswith("10k"):
            cmd.append("--baseline")
        r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
        ff = f"{r['ff_speedup']:.1f}" if "ff_speedup" in r else "-"
        print(f"{name:16} {r['requests']:9d} {r['wall_s']:8.2f} {r['cpu_s']:7.2f} "
              f"{r['warmup_s']:9.2f} "
              f"{r['req_per_s']:8.0f} "
              f"{r['ms_per_request']:7.3f} {VIDUR_MS_PER_REQUEST / r['ms_per_request']:8.0f}x "
              f"{ff:>6} {r['peak_rss_mib']:9.0f}")
        if r.get("identical_without_ff") is False:
            print(f"  WARNING: {name}: results differ without fast-forward")
    return 0


if __name__ == "__main__":
    sys.exit(main())
