"""``sluice`` command line (DESIGN §5).

Every subcommand sets ``func(args) -> int``. Bad input raises :class:`SluiceError`, which
``main`` turns into one line on stderr and exit code 2 - never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from sluice.errors import ConfigError, SluiceError


# -- shared flags --------------------------------------------------------------------------
def add_deployment_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("deployment")
    g.add_argument("--config", default=None, metavar="F.yaml",
                   help="YAML/JSON file of defaults for any flag (keys = flag names)")
    g.add_argument("--model", default="llama-3.1-8b", help="model id or config.json path")
    g.add_argument("--gpu", default="h100", help="GPU name (see `sluice perf validate`)")
    g.add_argument("--tp", type=int, default=1, help="tensor-parallel degree")
    g.add_argument("--dp", type=int, default=1,
                   help="data-parallel ranks of a MoE model, stepped in lock step as vLLM does "
                        "(arrivals spread by vLLM's DP load balancer)")
    g.add_argument("--enable-expert-parallel", dest="expert_parallel", action="store_true",
                   help="with --dp: split the experts over the DP ranks (vLLM DP+EP)")
    g.add_argument("--perf", default="fitted", metavar="KIND",
                   help="performance model: fitted, roofline or calibrated:PATH")
    g.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    g.add_argument("--num-gpu-blocks", type=int, default=None,
                   help="override the KV capacity computed from GPU memory")
    g.add_argument("--block-size", type=int, default=16)
    g.add_argument("--max-model-len", type=int, default=None)
    g.add_argument("--swap-space", type=float, default=4.0, metavar="GIB",
                   help="host memory for swapped KV (GiB)")
    s = p.add_argument_group("scheduler")
    s.add_argument("--max-num-seqs", type=int, default=None)
    s.add_argument("--max-num-batched-tokens", type=int, default=None)
    s.add_argument("--no-chunked-prefill", dest="chunked_prefill", action="store_false",
                   default=None)
    s.add_argument("--no-prefix-caching", dest="prefix_caching", action="store_false",
                   default=None)
    s.add_argument("--preemption-mode", choices=["recompute", "swap"], default=None)
    s.add_argument("--swap-overlap", action="store_true",
                   help="KV swaps overlap with compute (a step costs max(compute, copy))")
    s.add_argument("--long-prefill-token-threshold", type=int, default=None)
    s.add_argument("--policy-opt", action="append", default=[], metavar="[POLICY:]KEY=VALUE",
                   help="policy option (repeatable), e.g. --policy-opt quantile=0.9; with "
                        "POLICY: only that policy of a compare gets it")
    s.add_argument("--no-fast-forward", dest="fast_forward", action="store_false",
                   help="plan every step (results are identical; for testing)")
    o = p.add_argument_group("output")
    o.add_argument("--goodput", nargs="+", default=None, metavar="NAME:MS",
                   help="SLOs for goodput, e.g. ttft:200 tpot:50 e2el:10000 (ms)")
    o.add_argument("--out", default=None, metavar="DIR", help="write requests.csv + summary")
    o.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def parse_policy_options(items: list[str], policy: str | None = None) -> dict[str, Any]:
    """``KEY=VALUE`` goes to every policy; ``POLICY:KEY=VALUE`` only to that policy (so
    ``compare --policies vllm,jitserve --policy-opt jitserve:predictor=oracle`` works)."""
    opts: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        scope, colon, name = key.rpartition(":")
        if not sep or not name:
            raise ConfigError(f"--policy-opt {item!r}: expected [POLICY:]KEY=VALUE")
        if colon and policy is not None and scope != policy:
            continue
        opts[name] = _parse_value(raw)
    return opts


def _parse_value(raw: str) -> Any:
    low = raw.lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(raw)
        except ValueError:
            pass
    return raw


def apply_config_file(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; if ``--config F`` is given, its keys become defaults, flags win."""
    args = parser.parse_args(argv)
    path = getattr(args, "config", None)
    if not path:
        return args
    data = _read_config(Path(path))
    dests = {a.dest for a in parser._actions}
    for sub in parser._subparsers._group_actions if parser._subparsers else []:
        for sp in sub.choices.values():
            dests |= {a.dest for a in sp._actions}
    bad = sorted(k.replace("-", "_") for k in data if k.replace("-", "_") not in dests)
    if bad:
        raise ConfigError(f"{path}: unknown key(s) {bad}")
    defaults = {k.replace("-", "_"): v for k, v in data.items()}
    for sp in _subparsers(parser):
        sp.set_defaults(**defaults)
    return parser.parse_args(argv)


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    out = []
    if parser._subparsers:
        for action in parser._subparsers._group_actions:
            out.extend(action.choices.values())
    return out


def _read_config(path: Path) -> dict:
    if not path.exists():
        raise ConfigError(f"--config {path}: no such file")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - any parse error is the user's file
        raise ConfigError(f"--config {path}: cannot parse: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of flag names to values")
    return data


def sim_config_from_args(args: argparse.Namespace, policy: str | None = None):
    from sluice.metrics.summary import parse_goodput
    from sluice.sim.runner import SimConfig

    perf_kind = args.perf
    return SimConfig(
        model=args.model, gpu=args.gpu, tp=args.tp, policy=policy or args.policy,
        policy_options=parse_policy_options(args.policy_opt, policy or args.policy),
        seed=args.seed,
        max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
        enable_chunked_prefill=args.chunked_prefill, enable_prefix_caching=args.prefix_caching,
        preemption_mode=args.preemption_mode,
        long_prefill_token_threshold=args.long_prefill_token_threshold,
        block_size=args.block_size, num_gpu_blocks=args.num_gpu_blocks,
        swap_space_gib=args.swap_space, max_model_len=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization, perf_kind=perf_kind,
        fast_forward=args.fast_forward, goodput=parse_goodput(args.goodput),
        swap_overlap=args.swap_overlap, dp=args.dp, expert_parallel=args.expert_parallel,
    )


# -- progress ------------------------------------------------------------------------------
class Progress:
    """A progress line on stderr that appears only once a run has taken over a second."""

    def __init__(self, label: str, enabled: bool = True) -> None:
        self.label = label
        self.enabled = enabled and sys.stderr.isatty()
        self.t0 = time.monotonic()
        self._calls = 0
        self._bar = None
        self._task = None

    def __call__(self, sim_time: float) -> None:
        self._calls += 1
        if not self.enabled or self._calls & 1023:
            return
        if self._bar is None:
            if time.monotonic() - self.t0 < 1.0:
                return
            from rich.progress import Progress as RichProgress
            from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

            self._bar = RichProgress(SpinnerColumn(), TextColumn("{task.description}"),
                                     TimeElapsedColumn(), transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self.label)
        self._bar.update(self._task, description=f"{self.label}: simulated {sim_time:,.0f} s")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


# -- simulate / compare --------------------------------------------------------------------
def _run_one(args: argparse.Namespace, policy: str | None = None, label: str = "simulate"):
    from sluice.sim.runner import build_perf, run_simulation
    from sluice.workload.spec import build_workload

    cfg = sim_config_from_args(args, policy)
    perf = build_perf(cfg)
    cfg.perf = perf
    workload = build_workload(args, max_model_len=cfg.max_model_len or perf.max_model_len)
    progress = Progress(f"{label} {cfg.policy}", enabled=not args.json)
    try:
        result = run_simulation(cfg, workload, progress=progress)
    finally:
        progress.close()
    result.summary.update(_workload_notes(workload))
    result.summary.update({"model": args.model, "gpu": args.gpu, "tp": args.tp})
    return result


def _workload_notes(workload) -> dict:
    notes = getattr(workload, "report", None)
    if callable(notes):
        notes = notes()
    return {"workload": getattr(workload, "name", "?"), "workload_report": notes or {}}


def cmd_simulate(args: argparse.Namespace) -> int:
    result = _run_one(args)
    if args.out:
        _write_out(Path(args.out), {args.policy: result})
    if args.json:
        print(json.dumps(result.summary, sort_keys=True, default=_json_default))
    else:
        from sluice.metrics.report import print_table, summary_table

        dp = f" DP{args.dp}{'+EP' if args.expert_parallel else ''}" if args.dp != 1 else ""
        print_table(summary_table(result.summary, f"sluice simulate — {args.policy}, "
                                  f"{args.model} on {args.gpu} x{args.tp}{dp}"))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    names = [p.strip() for p in args.policies.split(",") if p.strip()]
    if not names:
        raise ConfigError("--policies needs at least one policy name")
    from sluice.policies.base import make_policy

    for n in names:  # fail fast on a bad name, before any long run
        make_policy(n, **parse_policy_options(args.policy_opt, n))
    results = {n: _run_one(args, n, "compare") for n in names}
    if args.out:
        _write_out(Path(args.out), results)
    summaries = {n: r.summary for n, r in results.items()}
    if args.json:
        print(json.dumps({"policies": summaries}, sort_keys=True, default=_json_default))
    else:
        from sluice.metrics.report import compare_table, print_table

        print_table(compare_table(summaries, f"sluice compare — {args.model} on {args.gpu} "
                                             f"x{args.tp}"))
    return 0


def _write_out(out: Path, results: dict) -> None:
    from sluice.metrics.records import write_csv

    out.mkdir(parents=True, exist_ok=True)
    for name, r in results.items():
        suffix = "" if len(results) == 1 else f"-{name}"
        write_csv(r.records, out / f"requests{suffix}.csv")
        (out / f"summary{suffix}.json").write_text(
            json.dumps(r.summary, sort_keys=True, indent=2, default=_json_default))


def _json_default(o: Any) -> Any:
    import dataclasses

    if hasattr(o, "item"):
        return o.item()
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# -- parser --------------------------------------------------------------------------------
def _sim_parser(sub, name: str, help_: str, func: Callable) -> argparse.ArgumentParser:
    from sluice.workload.spec import add_workload_args

    p = sub.add_parser(name, help=help_)
    add_deployment_args(p)
    add_workload_args(p)
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sluice", description="Scheduling-first LLM serving: simulate, compare, serve.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = _sim_parser(sub, "simulate", "replay a workload through a simulated replica",
                    cmd_simulate)
    p.add_argument("--policy", default="vllm", help="scheduling policy (or a+b composition)")
    p = _sim_parser(sub, "compare", "run several policies on the same workload", cmd_compare)
    p.add_argument("--policies", required=True, help="comma-separated policy names")
    p.add_argument("--policy", default="vllm", help=argparse.SUPPRESS)
    p = _sim_parser(sub, "sweep", "goodput / SLO attainment across request rates",
                    _lazy("sluice.sim.sweep", "cmd_sweep"))
    from sluice.sim.sweep import add_sweep_args

    add_sweep_args(p)
    for command, (module, extra) in OPTIONAL_COMMANDS.items():
        _add_optional(sub, command, module, extra)
    return parser


OPTIONAL_COMMANDS = {
    "trace": ("sluice.workload.cli", ""),
    "perf": ("sluice.perf.cli", ""),
    "model": ("sluice.executors.torch.cli", "engine"),
    "serve": ("sluice.server.cli", "serve"),
    "bench": ("sluice.bench.cli", "serve"),
}


def _lazy(module: str, func: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        import importlib

        return getattr(importlib.import_module(module), func)(args)

    return run


def _add_optional(sub, command: str, module: str, extra: str) -> None:
    """Subcommands living in their own module; a missing extra fails when used, not at start."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        hint = f"pip install 'sluice[{extra}]'" if extra else "reinstall sluice"
        msg = f"`sluice {command}` is unavailable ({exc}); {hint}"
        p = sub.add_parser(command, help=f"(unavailable: {hint})")
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=lambda _a: _fail(msg))
        return
    mod.add_parser(sub)


def _fail(msg: str) -> int:
    raise ConfigError(msg)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    try:
        args = apply_config_file(parser, argv)
        return int(args.func(args) or 0)
    except SluiceError as exc:
        print(f"sluice: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        print("sluice: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
