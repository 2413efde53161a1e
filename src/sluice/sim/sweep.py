"""``sluice sweep``: goodput and SLO attainment across request rates, and the max goodput.

*Max goodput* follows DistServe/FlowPrefill: the highest request rate at which at least
``--attainment`` (default 90%) of requests meet their SLO. The SLO is ``--goodput`` if given
(the same bound for every request), else each request's own SLO class. Runs are independent, so
``--ray ADDRESS`` fans them out over a Ray cluster (optional extra).
"""

from __future__ import annotations

import argparse
import copy
import json

from sluice.errors import ConfigError


def add_sweep_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sweep")
    g.add_argument("--rates", required=True, metavar="R1,R2,..",
                   help="request rates (req/s) to run; each sets --rate")
    g.add_argument("--policies", default=None, help="comma-separated policies (default --policy)")
    g.add_argument("--policy", default="vllm")
    g.add_argument("--attainment", type=float, default=0.9,
                   help="SLO attainment that counts as 'meeting SLOs' (default 0.9)")
    g.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="run points on a Ray cluster ('auto' or host:port; needs sluice[scale])")


def _parse_rates(text: str) -> list[float]:
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--rates {text!r}: expected comma-separated numbers") from None
    if not rates or any(r <= 0 for r in rates):
        raise ConfigError(f"--rates {text!r}: rates must be > 0")
    return sorted(rates)


def attainment_of(summary: dict) -> float | None:
    if summary.get("goodput_fraction") is not None:
        return summary["goodput_fraction"]
    return summary.get("slo_attainment")


def run_point(args: argparse.Namespace, policy: str, rate: float) -> dict:
    from sluice.cli import _run_one

    a = copy.copy(args)
    a.rate = rate
    a.json = True  # no progress bars inside a sweep
    s = _run_one(a, policy, "sweep").summary
    return {"policy": policy, "rate": rate, "attainment": attainment_of(s),
            "request_goodput": s.get("request_goodput"), "mean_ttft_ms": s["mean_ttft_ms"],
            "p99_ttft_ms": s["p99_ttft_ms"], "mean_tpot_ms": s["mean_tpot_ms"],
            "request_throughput": s["request_throughput"], "completed": s["completed"]}


def max_goodput(points: list[dict], threshold: float) -> float | None:
    """Highest rate whose attainment >= threshold, provided every lower rate met it too."""
    best = None
    for pt in sorted(points, key=lambda p: p["rate"]):
        if pt["attainment"] is None or pt["attainment"] < threshold:
            break
        best = pt["rate"]
    return best


def cmd_sweep(args: argparse.Namespace) -> int:
    rates = _parse_rates(args.rates)
    policies = [p.strip() for p in (args.policies or args.policy).split(",") if p.strip()]
    if not args.goodput and not args.slo and not args.slo_class:
        raise ConfigError("sweep needs an SLO: --goodput ttft:MS tpot:MS, --slo or --slo-class")
    jobs = [(p, r) for p in policies for r in rates]
    points = _run_ray(args, jobs) if args.ray else [run_point(args, p, r) for p, r in jobs]
    result = {"points": points, "max_goodput": {
        p: max_goodput([x for x in points if x["policy"] == p], args.attainment)
        for p in policies}, "attainment_threshold": args.attainment}
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        _print(result)
    return 0


def _run_ray(args: argparse.Namespace, jobs: list[tuple[str, float]]) -> list[dict]:
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs the scale extra: pip install 'sluice[scale]'") from None
    ray.init(address=None if args.ray == "local" else args.ray, ignore_reinit_error=True)
    remote = ray.remote(run_point)
    return ray.get([remote.remote(args, p, r) for p, r in jobs])


def _print(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from sluice.metrics.report import fmt

    t = Table(title="sluice sweep", title_justify="left")
    for col in ("policy", "rate", "attainment", "goodput", "TTFT mean", "TTFT p99", "TPOT mean"):
        t.add_column(col, justify="right")
    for p in result["points"]:
        t.add_row(p["policy"], fmt(p["rate"], "{:.2f}"), fmt(p["attainment"], "{:.1%}"),
                  fmt(p["request_goodput"], "{:.2f}"), fmt(p["mean_ttft_ms"], "{:.1f}"),
                  fmt(p["p99_ttft_ms"], "{:.1f}"), fmt(p["mean_tpot_ms"], "{:.2f}"))
    Console().print(t)
    for pol, best in result["max_goodput"].items():
        Console().print(f"max goodput {pol}: {fmt(best, '{:.2f}')} req/s "
                        f"(attainment >= {result['attainment_threshold']:.0%})")
