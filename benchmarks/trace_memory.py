"""Memory stays flat while a 10 M-row BurstGPT-schema trace is replayed.

Writes a synthetic file in BurstGPT v3's published schema (``Timestamp, Session ID, Elapsed
time, Model, Request tokens, Response tokens, Total tokens, Log Type``; values are random, not
BurstGPT data), then streams it through the whole workload path (parse -> transforms ->
``Request`` objects) without keeping anything, and prints the RSS after the first 100k rows
and the peak RSS at the end. Flat memory means the two are close.

    .venv/bin/python benchmarks/trace_memory.py [--rows 10000000] [--path /tmp/burst.csv]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    """VmHWM of this process image (getrusage's ru_maxrss survives exec and would report the
    parent's peak from writing the file)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_trace(path: Path, rows: int, seed: int = 0) -> None:
    """Chunked writer: arrivals ~ Poisson at 2 req/s, lognormal lengths, 1% failures."""
    rng = np.random.default_rng(seed)
    t = 0.0
    with open(path, "w") as f:
        f.write("Timestamp,Session ID,Elapsed time,Model,Request tokens,Response tokens,"
                "Total tokens,Log Type\n")
        for start in range(0, rows, 100_000):
            n = min(100_000, rows - start)
            ts = t + np.cumsum(rng.exponential(0.5, n))
            t = float(ts[-1])
            req = np.clip(rng.lognormal(6.5, 1.0, n), 1, 32_000).astype(np.int64)
            resp = np.clip(rng.lognormal(5.5, 0.8, n), 1, 4_000).astype(np.int64)
            resp[rng.random(n) < 0.01] = 0
            sess = rng.integers(0, 1_000_000, n)
            gpt4 = rng.random(n) < 0.2
            lines = [f"{a:.3f},s{s},{e:.2f},{'GPT-4' if g else 'ChatGPT'},{q},{r},{q + r},"
                     f"Conversation log\n"
                     for a, s, e, g, q, r in zip(ts.tolist(), sess.tolist(),
                                                 (resp * 0.03).tolist(), gpt4.tolist(),
                                                 req.tolist(), resp.tolist())]
            f.writelines(lines)


def replay(path: Path) -> dict:
    from sluice.workload.replay import ReplayOptions, TraceWorkload
    from sluice.workload.tenancy import Decorator, TenantAssigner
    from sluice.workload.traces import Trace

    trace = Trace(path)
    w = TraceWorkload(trace, ReplayOptions(rate_scale=2.0, max_tokens=2048),
                      decorator=Decorator(tenants=TenantAssigner("session")))
    t0 = time.perf_counter()
    n, early, tokens = 0, None, 0
    for req in w.requests():
        n += 1
        tokens += req.prompt_len
        if n == 100_000:
            early = rss_mib()
    return {"rows_replayed": n, "dropped_rows": dict(trace.dropped),
            "rss_after_100k_mib": round(early or rss_mib(), 1),
            "rss_end_mib": round(rss_mib(), 1), "peak_rss_mib": round(peak_rss_mib(), 1),
            "replay_s": round(time.perf_counter() - t0, 1),
            "rows_per_s": round(n / (time.perf_counter() - t0))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--path", default="/tmp/sluice_burstgpt_10m.csv")
    ap.add_argument("--keep", action="store_true", help="keep the generated file")
    ap.add_argument("--replay-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    path = Path(args.path)
    if args.replay_only:  # child process: its peak RSS is the replay's alone
        print(json.dumps(replay(path)))
        return
    if not path.exists():
        t0 = time.perf_counter()
        write_trace(path, args.rows)
        print(f"wrote {args.rows:,} rows ({path.stat().st_size / 2**20:,.0f} MiB) in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    child = subprocess.run([sys.executable, __file__, "--replay-only", "--path", str(path)],
                           check=True, capture_output=True, text=True)
    result = {"rows": args.rows, "file_mib": round(path.stat().st_size / 2**20),
              **json.loads(child.stdout)}
    print(json.dumps(result))
    if not args.keep:
        path.unlink()


if __name__ == "__main__":
    main()
