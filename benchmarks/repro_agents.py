"""Reproductions of the agent-aware papers (issue 6): Continuum, ThunderAgent, KVFlow, SAGA.

    .venv/bin/python benchmarks/repro_agents.py all            # every table, then the plots
    .venv/bin/python benchmarks/repro_agents.py continuum kvflow   # some experiments
    .venv/bin/python benchmarks/repro_agents.py all --quick    # smaller (CI smoke)

Why its own driver and not ``sluice compare``: the program metrics need two things the CLI
summary does not carry yet - blocks held by pins over time (sampled here from the KV cache at
every event) and the policy's retention ledger - and the cost-side experiment mixes plain
requests into agent traffic. Everything else is the normal simulator: ``build_engine`` +
``SimLoop`` + the bundled perf model of Llama-3.1-8B on an H100.

KV capacity is the real one (28,225 blocks = 451k tokens for Llama-3.1-8B on an H100 at 0.9
memory utilisation) except where a row says otherwise: the function-calling and chat rows use a
smaller cache so that a few hundred programs put it under pressure within minutes of wall time.
Tables print as markdown; plots go to ``--out``, raw numbers to ``--json-out``.
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from sluice.core.content import Content
from sluice.core.request import Request
from sluice.metrics.programs import program_summary
from sluice.metrics.records import RequestRecord
from sluice.metrics.summary import summarize
from sluice.sim.loop import SimLoop
from sluice.sim.runner import SimConfig, build_engine, build_perf
from sluice.workload.agents import agent_workload
from sluice.workload.synth import Poisson

PLAIN_ID_BASE = 1 << 40  # ids of non-agent requests mixed in (agent ids are pid*1024+turn)


class Mixed:
    """Agent programs plus open-loop plain requests (the cost side: who pays for pins)."""

    def __init__(self, agents, rate: float, n: int, seed: int, prompt: int = 1000,
                 output: int = 200) -> None:
        self.agents, self.rate, self.n, self.seed = agents, rate, n, seed
        self.prompt, self.output = prompt, output
        self.name = f"{agents.name}+plain"

    def _plain(self) -> Iterator[Request]:
        rng = np.random.default_rng([self.seed, 99])
        t = 0.0
        for i in range(self.n):
            t += rng.exponential(1.0 / self.rate)
            p = int(np.clip(rng.lognormal(np.log(self.prompt), 0.6), 16, 8000))
            o = int(np.clip(rng.lognormal(np.log(self.output), 0.6), 1, 2000))
            rid = PLAIN_ID_BASE + i
            yield Request(rid, t, Content(segments=[(PLAIN_ID_BASE * 2 + i, p)]), o,
                          user="plain", true_output=o)

    def requests(self) -> Iterator[Request]:
        return heapq.merge(self.agents.requests(), self._plain(), key=lambda r: r.arrival)

    def on_request_end(self, req: Request, now: float) -> list[Request]:
        return [] if req.program is None else self.agents.on_request_end(req, now)


# Tool-dependent durations for the coding preset (its plan draws one lognormal for all tools):
# viewing a file is instant, a test run is long. Factors keep the mean tool time ~ the preset's.
TOOL_SCALE = {"view": 0.1, "search": 0.3, "edit": 0.5, "bash": 1.5, "test": 2.6}


class PerToolTimes:
    """Wraps an agent workload so each tool's time is scaled by its own factor - the
    predictability that tool-duration histories (Continuum, KVFlow) can exploit."""

    def __init__(self, agents) -> None:
        self.agents = agents
        self.name = agents.name + "/per-tool"

    def requests(self) -> Iterator[Request]:
        return self.agents.requests()

    def on_request_end(self, req: Request, now: float) -> list[Request]:
        out = self.agents.on_request_end(req, now)
        for f in out:
            if f.program == req.program and req.tool is not None:
                f.arrival = now + (f.arrival - now) * TOOL_SCALE.get(req.tool, 1.0)
        return out


def _pinned_unique(kv) -> int:
    """Distinct blocks held by pins (a program's older pins overlap its newer ones, so the
    mechanism's ``pinned_blocks`` sum counts shared blocks more than once)."""
    return len({b for p in kv.pins.values() for b in p.blocks})


def simulate(cfg: SimConfig, workload, sample_every: float = 1.0) -> dict[str, Any]:
    """One run: the standard summary + program metrics + pinned-memory samples."""
    engine = build_engine(cfg)
    records: list[RequestRecord] = []
    samples: list[tuple[float, int]] = []
    nxt = [0.0]

    def sample(now: float) -> None:
        if now >= nxt[0]:
            samples.append((now, _pinned_unique(engine.kv)))
            nxt[0] = now + sample_every

    loop = SimLoop(engine, workload, fast_forward=cfg.fast_forward,
                   on_request_end=lambda r: records.append(RequestRecord.of(r)))
    t0 = time.monotonic()
    loop.run(sample)
    engine.kv.check([])
    records.sort(key=lambda r: r.id)
    out = summarize(records, engine.scheduler.all_itls())
    out.update(program_summary(records, engine.kv.stats, block_size=cfg.block_size,
                               pin_samples=samples, total_blocks=engine.kv.num_blocks,
                               retention=getattr(engine.policy, "retention", None)))
    plain = [r for r in records if r.program < 0 and r.completed]
    if plain:
        out["plain_mean_ttft_ms"] = float(np.mean([r.ttft for r in plain])) * 1e3
        out["plain_p90_ttft_ms"] = float(np.percentile([r.ttft for r in plain], 90)) * 1e3
        out["plain_mean_e2el_ms"] = float(np.mean([r.e2el for r in plain])) * 1e3
    out["wall_s"] = time.monotonic() - t0
    out["pin_series"] = samples
    return out


def base_cfg(policy: str, blocks: int, **kw) -> SimConfig:
    cfg = SimConfig(model="llama-3.1-8b", gpu="h100", policy=policy, num_gpu_blocks=blocks,
                    **kw)
    cfg.perf = build_perf(cfg)
    return cfg


KEYS = ("programs_completed", "mean_program_jct_s", "p90_program_jct_s", "programs_per_minute",
        "context_hit_rate", "reprefilled_tokens", "mean_turn_queue_s", "preemptions",
        "mean_pinned_fraction", "pins_reclaimed")


def row(name: str, d: dict[str, Any], keys=KEYS) -> str:
    def f(x):
        if x is None:
            return "-"
        if isinstance(x, float):
            return f"{x:,.3g}" if abs(x) < 100 else f"{x:,.0f}"
        return f"{x:,}"
    return f"| {name} | " + " | ".join(f(d.get(k)) for k in keys) + " |"


def header(first: str, keys=KEYS) -> str:
    return f"| {first} | " + " | ".join(keys) + " |\n|" + "---|" * (len(keys) + 1)


# -- experiments ------------------------------------------------------------------------------
H100_BLOCKS = 28225  # Llama-3.1-8B on one H100 at 0.9 memory utilisation: 451k tokens


def exp_continuum(q: bool) -> dict:
    """Continuum vs vLLM: program JCT across program arrival rates (open loop)."""
    res: dict = {}
    n = 30 if q else 80
    for rate in ((0.5,) if q else (0.2, 0.5, 1.0)):
        for pol, opts in (("vllm", {}), ("program_fcfs", {}), ("continuum", {}),
                          ("continuum", {"mode": "fixed", "ttl": 10.0})):
            name = pol if not opts else f"{pol}(fixed,10s)"
            w = agent_workload("agent-coding", programs=n, arrivals=Poisson(rate), seed=1,
                               max_model_len=131072)
            res[f"{name}@{rate}"] = simulate(base_cfg(pol, H100_BLOCKS, policy_options=opts), w)
            _log(name, rate, res[f"{name}@{rate}"])
    return res


def exp_thunder(q: bool) -> dict:
    """ThunderAgent vs vLLM: completed programs per minute, closed population."""
    res: dict = {}
    for pop in ((30,) if q else (30, 60, 90)):
        for pol, opts in (("vllm", {}), ("thunderagent", {}),
                          ("thunderagent", {"decay": 20.0}), ("continuum", {})):
            name = pol if not opts else f"{pol}(decay=20s)"
            w = agent_workload("agent-coding", programs=2 * pop, population=pop, seed=2,
                               max_model_len=131072)
            res[f"{name}@{pop}"] = simulate(base_cfg(pol, H100_BLOCKS, policy_options=opts), w)
            _log(name, pop, res[f"{name}@{pop}"])
    return res


def exp_kvflow(q: bool) -> dict:
    """KVFlow vs LRU prefix caching: many concurrent short workflows (function calling, on a
    small cache) and coding agents; re-prefilled tokens and program JCT."""
    res: dict = {}
    cases = (("agent-fc", 20.0, 100 if q else 400, 2048, False),
             ("agent-coding", 0.5, 30 if q else 80, H100_BLOCKS, False),
             ("agent-coding", 0.5, 30 if q else 80, H100_BLOCKS, True))
    for preset, rate, n, blocks, per_tool in cases:
        for pol in ("vllm", "kvflow", "continuum"):
            w = agent_workload(preset, programs=n, arrivals=Poisson(rate), seed=3,
                               max_model_len=131072)
            label = preset + ("/per-tool" if per_tool else "")
            res[f"{pol}@{label}"] = simulate(base_cfg(pol, blocks),
                                             PerToolTimes(w) if per_tool else w)
            _log(pol, label, res[f"{pol}@{label}"])
    return res


def exp_cost(q: bool) -> dict:
    """The cost side: plain requests mixed into agent traffic; pins' memory and plain TTFT,
    at a light and a heavy plain rate (the heavy one competes with the pins for memory)."""
    res: dict = {}
    for rate, n in ((2.0, 600), (8.0, 2400)):
        for pol in ("vllm", "continuum", "thunderagent", "kvflow"):
            agents = agent_workload("agent-coding", programs=20 if q else 40,
                                    population=20 if q else 40, seed=4, max_model_len=131072)
            w = Mixed(agents, rate=rate, n=n // 3 if q else n, seed=4)
            res[f"{pol}@plain{rate:g}"] = simulate(base_cfg(pol, H100_BLOCKS), w)
            _log(pol, f"plain{rate:g}", res[f"{pol}@plain{rate:g}"])
    return res


def exp_longctx(q: bool) -> dict:
    """A long-context model: Mistral-Nemo-12B (128k context) on one H100, 305k-token cache."""
    res: dict = {}
    pop = 20 if q else 40
    for pol in ("vllm", "thunderagent", "continuum"):
        w = agent_workload("agent-coding", programs=2 * pop, population=pop, seed=2,
                           max_model_len=131072)
        cfg = SimConfig(model="mistral-nemo-12b", gpu="h100", policy=pol)
        cfg.perf = build_perf(cfg)
        res[f"{pol}@{pop}"] = simulate(cfg, w)
        _log(pol, f"nemo@{pop}", res[f"{pol}@{pop}"])
    return res


def exp_chat(q: bool) -> dict:
    """Multi-turn chat (216 s mean think time): utility TTL should mostly decline to pin."""
    res: dict = {}
    for pol in ("vllm", "continuum", "thunderagent"):
        w = agent_workload("agent-chat", programs=60 if q else 200, arrivals=Poisson(1.0),
                           seed=5, max_model_len=131072)
        res[pol] = simulate(base_cfg(pol, 8192), w)
        _log(pol, "chat", res[pol])
    return res


EXPERIMENTS = {"continuum": exp_continuum, "thunder": exp_thunder, "kvflow": exp_kvflow,
               "cost": exp_cost, "chat": exp_chat, "longctx": exp_longctx}


def _log(name: str, load: Any, d: dict) -> None:
    print(f"  {name:<24} {load!s:<14} jct={d['mean_program_jct_s']} "
          f"ppm={d['programs_per_minute']:.2f} reprefill={d['reprefilled_tokens']:,} "
          f"wall={d['wall_s']:.1f}s", file=sys.stderr, flush=True)


def tables(all_res: dict[str, dict]) -> str:
    parts = []
    for exp, res in all_res.items():
        parts.append(f"### {exp}\n\n" + header("policy@load"))
        parts += [row(k, v) for k, v in res.items()]
        if exp == "cost":
            keys = ("plain_mean_ttft_ms", "plain_p90_ttft_ms", "plain_mean_e2el_ms",
                    "mean_pinned_fraction", "peak_pinned_blocks")
            parts.append("\n" + header("policy (plain requests)", keys))
            parts += [row(k, v, keys) for k, v in res.items()]
        parts.append("")
    return "\n".join(parts)


def plots(all_res: dict[str, dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "continuum" in all_res:
        res = all_res["continuum"]
        fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
        for name in ("vllm", "program_fcfs", "continuum", "continuum(fixed,10s)"):
            pts = sorted((float(k.split("@")[1]), v) for k, v in res.items()
                         if k.split("@")[0] == name)
            ax[0].plot([p for p, _ in pts], [v["mean_program_jct_s"] for _, v in pts], "o-",
                       label=name)
            ax[1].plot([p for p, _ in pts], [v["p90_program_jct_s"] for _, v in pts], "o-",
                       label=name)
        for a, t in zip(ax, ("mean program JCT (s)", "p90 program JCT (s)")):
            a.set_xlabel("program arrivals / s (agent-coding)")
            a.set_title(t)
        ax[0].legend()
        fig.tight_layout()
        fig.savefig(out / "agents_continuum_jct.png", dpi=110)
        plt.close(fig)
    if "thunder" in all_res:
        res = all_res["thunder"]
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for name in ("vllm", "thunderagent", "thunderagent(decay=20s)", "continuum"):
            pts = sorted((int(k.split("@")[1]), v) for k, v in res.items()
                         if k.split("@")[0] == name)
            ax.plot([p for p, _ in pts], [v["programs_per_minute"] for _, v in pts], "o-",
                    label=name)
        ax.set_xlabel("concurrent programs (closed loop)")
        ax.set_ylabel("completed programs / minute")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "agents_thunder_throughput.png", dpi=110)
        plt.close(fig)
    if "cost" in all_res:
        res = all_res["cost"]
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for name, v in res.items():
            if not name.endswith("plain8"):
                continue
            s = v["pin_series"]
            if s and max(b for _, b in s) > 0:
                ax.plot([t for t, _ in s], [b / H100_BLOCKS for _, b in s], label=name)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("share of KV blocks held by pins")
        ax.set_title("agent-coding x40 + plain requests at 8/s")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "agents_pinned_memory.png", dpi=110)
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("which", nargs="+", choices=["all", *EXPERIMENTS])
    p.add_argument("--quick", action="store_true", help="fewer programs and loads")
    p.add_argument("--out", default="docs", help="folder for the plots")
    p.add_argument("--json-out", default="/tmp/agents_results.json", help="raw results")
    args = p.parse_args(argv)
    names = list(EXPERIMENTS) if "all" in args.which else args.which
    all_res = {n: EXPERIMENTS[n](args.quick) for n in names}
    print(tables(all_res))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plots(all_res, out)
    slim = {e: {k: {x: y for x, y in v.items() if x != "pin_series"} for k, v in r.items()}
            for e, r in all_res.items()}
    Path(args.json_out).write_text(
        json.dumps(slim, indent=1, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
