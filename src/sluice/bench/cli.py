"""``sluice bench``: replay a workload against an OpenAI-compatible server and print the same
summary (table or ``--json``) as ``sluice simulate``.

Why the same keys: a policy is chosen in simulation and checked on a real server; comparing the
two must be a diff of two JSON objects, not a translation. Keys only a server can answer
(steps, KV usage, preemptions) come from sluice's ``/metrics`` and are ``None`` elsewhere; keys
that describe a simulated deployment (``gpu``, ``tp``) are ``None`` here.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from sluice.cli import _json_default, _workload_notes
from sluice.errors import ConfigError


def add_parser(sub) -> argparse.ArgumentParser:
    from sluice.workload.spec import add_workload_args

    p = sub.add_parser("bench", help="replay a workload against an OpenAI-compatible endpoint")
    p.add_argument("--base-url", required=True, metavar="URL",
                   help="the API root, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", default=None,
                   help="model name to request (default: the first one /v1/models lists)")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "EMPTY"))
    p.add_argument("--max-concurrency", type=int, default=None, metavar="N",
                   help="at most N requests in flight (default: open loop, no limit)")
    p.add_argument("--token-range", default="100:250", metavar="LO:HI",
                   help="prompt token ids are drawn from [LO, HI) (must be valid for the model)")
    p.add_argument("--no-sluice-fields", dest="sluice_fields", action="store_false",
                   help="do not send user/priority/slo/program fields (strict servers)")
    p.add_argument("--policy-label", default=None,
                   help="policy name to report (default: what a sluice server says)")
    p.add_argument("--timeout", type=float, default=600.0, help="per-request timeout (s)")
    p.add_argument("--goodput", nargs="+", default=None, metavar="NAME:MS",
                   help="SLOs for goodput, e.g. ttft:200 tpot:50 e2el:10000 (ms)")
    p.add_argument("--out", default=None, metavar="DIR", help="write requests.csv + summary")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--twin", action="store_true",
                   help="also simulate this deployment (sluice servers: GET /sluice/config) "
                        "with a perf model calibrated on its step log; print both")
    p.add_argument("--step-log", default=None, metavar="F",
                   help="--twin: the server's step log (default: the path the server reports)")
    p.add_argument("--twin-gpu", default=None, metavar="NAME",
                   help="--twin: GPU spec of the server (default cpu for a CPU server)")
    p.add_argument("--twin-calibration", default=None, metavar="F",
                   help="--twin: use this calibration file (e.g. fitted on another run) "
                        "instead of calibrating on the step log")
    add_workload_args(p)
    p.set_defaults(func=cmd_bench)
    return p


def cmd_bench(args: argparse.Namespace) -> int:
    if args.max_concurrency is not None and args.max_concurrency < 1:
        raise ConfigError(f"--max-concurrency must be >= 1, got {args.max_concurrency}")
    if args.twin_calibration and not args.twin:
        raise ConfigError("--twin-calibration only makes sense with --twin")
    deployment = None
    if args.twin:
        from sluice.bench.twin import fetch_deployment

        deployment = fetch_deployment(args.base_url)  # fail before the run, not after
    summary, run, stats = bench_summary(args)
    if args.out:
        _write_out(Path(args.out), run.records, summary)
    if deployment is not None:
        return _print_twin(args, deployment, summary, stats.rtts)
    if args.json:
        print(json.dumps(summary, sort_keys=True, default=_json_default))
    else:
        from sluice.metrics.report import print_table, summary_table

        print_table(summary_table(summary, f"sluice bench — {summary['model']} at "
                                           f"{args.base_url}"))
    return 0


def _print_twin(args: argparse.Namespace, deployment: dict, measured: dict,
                rtts: list[float]) -> int:
    from sluice.bench.twin import print_side_by_side, run_twin
    from sluice.metrics.summary import parse_goodput

    twin = run_twin(args, deployment, parse_goodput(args.goodput), rtts)
    if args.json:
        print(json.dumps({"measured": measured, **twin}, sort_keys=True,
                         default=_json_default))
    else:
        from sluice.bench.twin import describe_calibration

        print_side_by_side(measured, twin["simulated"],
                           f"sluice bench --twin — {measured['model']}, policy "
                           f"{deployment['policy']}")
        print(describe_calibration(twin["calibration"]))
    return 0


def bench_summary(args: argparse.Namespace):
    """Run the benchmark the flags describe; returns (summary dict, BenchRun, ServerStats)."""
    from sluice.bench.client import BenchConfig, BenchClient, fetch_model
    from sluice.bench.prompts import parse_range
    from sluice.bench.server_stats import ServerSampler
    from sluice.metrics.summary import parse_goodput, summarize
    from sluice.workload.spec import build_workload

    goodput = parse_goodput(args.goodput)
    listed, max_len = _model_of(args.base_url, args.api_key, fetch_model)
    model = args.model or listed
    cfg = BenchConfig(args.base_url, model, api_key=args.api_key,
                      token_range=parse_range(args.token_range),
                      max_concurrency=args.max_concurrency, timeout=args.timeout,
                      sluice_fields=args.sluice_fields)
    workload = build_workload(args, max_model_len=max_len)

    async def go():
        sampler = ServerSampler(args.base_url)
        await sampler.start()
        try:
            run = await BenchClient(cfg, workload).run()
        finally:
            stats = await sampler.stop()
        return run, stats

    import asyncio  # here, not at the top: every `sluice` command builds this parser

    run, stats = asyncio.run(go())
    summary = summarize(run.records, run.itls, goodput or None)
    summary.update(stats.summary_keys())
    if stats.preemptions is not None:
        summary["preemptions"] = stats.preemptions
    summary.update(_workload_notes(workload))
    summary.update({"policy": args.policy_label or stats.policy, "model": model, "gpu": None,
                    "tp": None, "max_model_len": max_len})
    return summary, run, stats


def _model_of(base_url: str, api_key: str, fetch) -> tuple[str | None, int | None]:
    import asyncio

    import httpx

    try:
        return asyncio.run(fetch(base_url, api_key))
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        raise ConfigError(f"--base-url {base_url}: cannot list models ({exc}); is the "
                          f"server up and is the URL the API root (…/v1)?") from None


def _write_out(out: Path, records, summary: dict) -> None:
    from sluice.metrics.records import write_csv

    out.mkdir(parents=True, exist_ok=True)
    write_csv(records, out / "requests.csv")
    (out / "summary.json").write_text(json.dumps(summary, sort_keys=True, indent=2,
                                                 default=_json_default))

