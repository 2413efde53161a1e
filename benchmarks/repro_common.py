"""Shared helpers of the issue-5 reproductions (benchmarks/repro_*.py).

Each reproduction is stated as ``sluice`` CLI flags, so the command printed in docs/results.md
is exactly what the script runs; the script only adds per-tenant / per-class metrics that the
summary does not break down, and the plot.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Iterable

import numpy as np

from sluice.cli import _run_one, build_parser, sim_config_from_args
from sluice.sim.runner import SimResult, build_perf, run_simulation
from sluice.workload.spec import build_workload

DOCS = Path(__file__).resolve().parents[1] / "docs"


def parse(flags: str, policy: str = "vllm"):
    args = build_parser().parse_args(["simulate", *shlex.split(flags), "--policy", policy,
                                      "--json"])
    return args


def run(flags: str, policy: str) -> SimResult:
    """``sluice simulate FLAGS --policy POLICY``, returning records as well as the summary."""
    return _run_one(parse(flags, policy), policy, "repro")


class Only:
    """The workload with only some requests kept (e.g. one tenant 'running alone')."""

    def __init__(self, workload, keep) -> None:
        self.inner, self.keep, self.name = workload, keep, workload.name

    def requests(self):
        return (r for r in self.inner.requests() if self.keep(r))

    def on_request_end(self, req, now):
        return self.inner.on_request_end(req, now)


def run_filtered(flags: str, policy: str, keep) -> SimResult:
    args = parse(flags, policy)
    cfg = sim_config_from_args(args, policy)
    cfg.perf = build_perf(cfg)
    wl = build_workload(args, max_model_len=cfg.max_model_len or cfg.perf.max_model_len)
    return run_simulation(cfg, Only(wl, keep))


def pct(values: Iterable[float], q: float) -> float:
    v = np.array([x for x in values if x == x], dtype=float)
    return float(np.percentile(v, q)) if v.size else float("nan")


def ttfts_ms(res: SimResult, keep=lambda r: True) -> list[float]:
    return [1000.0 * r.ttft for r in res.records if r.completed and keep(r)]


def command(sub: str, flags: str, policies: str) -> str:
    return f"sluice {sub} --policies {policies} {flags}"


def savefig(fig, name: str) -> Path:
    path = DOCS / name
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def sweep(flags: str, policies: list[str], rates: list[float], threshold: float = 0.9) -> dict:
    """``sluice sweep --policies .. --rates .. FLAGS``: points and max goodput per policy."""
    from sluice.sim.sweep import max_goodput, run_point

    args = build_parser().parse_args(["sweep", "--rates", ",".join(map(str, rates)),
                                      *shlex.split(flags), "--json"])
    points = [run_point(args, p, r) for p in policies for r in rates]
    best = {p: max_goodput([x for x in points if x["policy"] == p], threshold)
            for p in policies}
    return {"points": points, "max_goodput": best}


def plot_sweep(ax, result: dict, title: str) -> None:
    for pol in result["max_goodput"]:
        pts = [p for p in result["points"] if p["policy"] == pol]
        ax.plot([p["rate"] for p in pts], [100 * (p["attainment"] or 0) for p in pts], "o-",
                label=f"{pol} (max {result['max_goodput'][pol]})")
    ax.axhline(90, color="k", ls="--", lw=1)
    ax.set_xlabel("request rate (req/s)")
    ax.set_ylabel("SLO attainment (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
