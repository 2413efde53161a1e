"""``sluice trace stats|convert``: inspect any supported trace, or rewrite it as sluice JSONL.

Why convert: a user's own trace in an odd schema is mapped once (``--trace-columns``) and then
replayed from sluice's JSONL, whose fields are exactly what a request needs; the output is
streamed row by row, so converting a 10 M-row BurstGPT file needs no memory to speak of.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from sluice.workload.stats import trace_stats
from sluice.workload.traces import BUNDLED, Trace, parse_columns


def add_parser(subparsers: Any) -> None:
    """Add ``trace`` with its ``stats`` and ``convert`` subcommands."""
    p = subparsers.add_parser("trace", help="inspect or convert a workload trace")
    sub = p.add_subparsers(dest="trace_cmd", required=True)
    st = sub.add_parser("stats", help="rows, span, rate, burstiness, lengths, prefix reuse")
    _common(st)
    st.add_argument("--json", action="store_true", help="print one JSON object")
    st.set_defaults(func=handler)
    cv = sub.add_parser("convert", help="write any supported trace as sluice JSONL")
    _common(cv)
    cv.add_argument("-o", "--out", required=True, metavar="FILE",
                    help="output .jsonl (or .jsonl.gz); '-' for stdout")
    cv.add_argument("--json", action="store_true", help="print a JSON summary")
    cv.set_defaults(func=handler)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("trace", metavar="NAME|PATH", help=f"{', '.join(BUNDLED)} or a file")
    p.add_argument("--format", default=None, help="azure, burstgpt, mooncake, lengths, sluice")
    p.add_argument("--trace-columns", default=None, metavar="MAP",
                   help="generic CSV/JSONL: arrival=COL,input=COL,output=COL[,session=..]")
    p.add_argument("--time-unit", default="s", help="generic: s, ms, us, ns, datetime")
    p.add_argument("--skip-bad-rows", action="store_true", help="skip and count bad rows")
    p.add_argument("--sort", action="store_true", help="sort by arrival (in memory)")


def _open(args: argparse.Namespace) -> Trace:
    cols = parse_columns(args.trace_columns) if args.trace_columns else None
    return Trace(args.trace, args.format, columns=cols, time_unit=args.time_unit,
                 skip_bad_rows=args.skip_bad_rows, sort=args.sort)


def handler(args: argparse.Namespace) -> int:
    trace = _open(args)
    if args.trace_cmd == "stats":
        stats = trace_stats(trace)
        print(json.dumps(stats, sort_keys=True) if args.json else render(stats))
        return 0
    summary = convert(trace, args.out)
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    elif args.out != "-":
        print(f"wrote {summary['rows']} requests to {args.out}")
    return 0


def record_json(rec) -> dict[str, Any]:
    obj: dict[str, Any] = {"input_len": rec.input_len, "output_len": rec.output_len}
    if rec.arrival is not None:
        obj = {"arrival": round(rec.arrival, 9), **obj}
    if rec.hash_ids is not None:
        obj["hash_ids"] = rec.hash_ids
        obj["block_size"] = rec.block_size
    if rec.session is not None:
        obj["session"] = rec.session
    if rec.user is not None:
        obj["user"] = rec.user
    return obj


def convert(trace: Trace, out: str) -> dict[str, Any]:
    """Stream ``trace`` to sluice JSONL at ``out`` (gzip if it ends in .gz)."""
    n = 0
    f: TextIO
    if out == "-":
        f = sys.stdout
    elif out.endswith(".gz"):
        f = gzip.open(out, "wt", encoding="utf-8")  # type: ignore[assignment]
    else:
        f = open(Path(out), "w", encoding="utf-8")
    try:
        for rec in trace.records():
            f.write(json.dumps(record_json(rec), separators=(",", ":")) + "\n")
            n += 1
    finally:
        if f is not sys.stdout:
            f.close()
    return {"rows": n, "out": out, "skipped_rows": dict(trace.skipped),
            "dropped_rows": dict(trace.dropped)}


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def render(s: dict[str, Any]) -> str:
    """Human-readable stats (the JSON has the same numbers)."""
    lines = [f"trace        {s.get('name', '')} ({s.get('format', '')})",
             f"rows         {_fmt(s['rows'])}"]
    if "span_s" in s:
        cv = s["count_cv"]
        lines += [f"span         {_fmt(s['span_s'])} s",
                  f"mean rate    {_fmt(s['mean_rate'], 3)} req/s",
                  f"IAT CV       {_fmt(s['iat_cv'], 3)}",
                  "count CV     " + "  ".join(f"{k}: {_fmt(v, 3)}" for k, v in cv.items())]
    for key in ("input_tokens", "output_tokens"):
        d = s[key]
        if d:
            lines.append(f"{key + ' ':<14}" + "  ".join(f"{k} {_fmt(d[k], 1)}" for k in
                                                 ("mean", "p50", "p90", "p99", "max")))
    lines.append(f"prefix reuse {_fmt(100 * (s['prefix_reuse_ceiling'] or 0.0), 1)}% of blocks "
                 "seen before (unlimited cache)")
    if "chains" in s:
        c = s["chains"]
        lines.append(f"turn chains  {_fmt(c['roots'])} chains, "
                     f"{_fmt(c['mean_requests_per_chain'])} requests/chain, "
                     f"max depth {c['max_depth']}")
    if "sessions" in s:
        c = s["sessions"]
        lines.append(f"sessions     {_fmt(c['count'])}, mean {_fmt(c['mean_turns'])} turns, "
                     f"max {c['max_turns']}")
    for key in ("skipped_rows", "dropped_rows"):
        if s.get(key):
            lines.append(f"{key.replace('_', ' '):<13}" + ", ".join(
                f"{r}: {n:,}" for r, n in s[key].items()))
    if s.get("non_monotone_timestamps"):
        lines.append(f"out of order {s['non_monotone_timestamps']:,} timestamps go back in time "
                     "(replay needs --sort)")
    return "\n".join(lines)
