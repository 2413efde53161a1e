"""The workload flags shared by ``sluice simulate|compare|sweep|bench`` and the one function
that turns them into a :class:`~sluice.workload.base.Workload`.

Why one place: every command must read the same ``--trace``/``--rate-scale``/``--seed`` the
same way (DESIGN section 5), and the flag help here is the user documentation of workloads.
With no flags the workload is the bundled Azure 2023 conversation trace (19,366 requests).
"""

from __future__ import annotations

import argparse
import math

from sluice.errors import ConfigError
from sluice.workload.base import Workload
from sluice.workload.traces import BUNDLED, DEFAULT_TRACE

SYNTH = ("poisson", "gamma", "weibull", "constant", "onoff", "diurnal", "burst")
AGENTS = ("agent-coding", "agent-fc", "agent-chat")
WORKLOADS = ("trace", *SYNTH, *AGENTS, "servegen", "inference-perf")


def add_workload_args(parser: argparse.ArgumentParser) -> None:
    """Add the workload flags (one argument group) to ``parser``."""
    g = parser.add_argument_group("workload")
    g.add_argument("--workload", default="trace", metavar="NAME",
                   help=f"traffic source: {', '.join(WORKLOADS)} (default: trace)")
    g.add_argument("--trace", default=None, metavar="NAME|PATH",
                   help=f"trace to replay: {', '.join(BUNDLED)} or a file (Azure, BurstGPT, "
                        f"Mooncake, length CSV, sluice JSONL; .gz ok); default {DEFAULT_TRACE}. "
                        "For synthetic workloads: where (input, output) length pairs are drawn "
                        "from (default sharegpt)")
    g.add_argument("--trace-format", default=None, metavar="FMT",
                   help="force the schema: azure, burstgpt, mooncake, lengths, sluice")
    g.add_argument("--trace-columns", default=None, metavar="MAP",
                   help="generic CSV/JSONL: arrival=COL,input=COL,output=COL[,session=..,user=..]")
    g.add_argument("--time-unit", default="s", help="generic trace time unit: s, ms, us, ns, "
                                                   "datetime (default s)")
    g.add_argument("--skip-bad-rows", action="store_true",
                   help="skip malformed rows (counted by reason) instead of stopping")
    g.add_argument("--sort", action="store_true",
                   help="sort a trace whose timestamps go back in time (loads it in memory)")
    g.add_argument("--rate", type=float, default=None, metavar="R",
                   help="req/s: rescale a trace's time to this mean rate; the arrival rate of "
                        "synthetic and length-only workloads; programs/s for agents")
    g.add_argument("--rate-scale", type=float, default=None, metavar="X",
                   help="compress trace time by X (X=2: twice the request rate)")
    g.add_argument("--arrival", default=None, metavar="PROC",
                   help=f"arrival process replacing the trace's times: {', '.join(SYNTH)}")
    g.add_argument("--cv", type=float, default=None, help="inter-arrival CV (gamma, weibull)")
    g.add_argument("--num-requests", type=int, default=None, metavar="N",
                   help="the first N requests (agents: N programs; synthetic default 1000)")
    g.add_argument("--duration", type=float, default=None, metavar="S",
                   help="synthetic: stop generating at S seconds")
    g.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    g.add_argument("--max-tokens", type=int, default=None, metavar="N",
                   help="cap max_tokens at N (default: the trace's output length, ignore_eos)")
    g.add_argument("--time-window", default=None, metavar="START:END",
                   help="keep trace arrivals in [START, END) seconds, shifted to start at 0")
    g.add_argument("--sample", type=float, default=None, metavar="F",
                   help="keep each request with probability F")
    g.add_argument("--max-context", default=None, metavar="N|model",
                   help="drop requests with input+output > N tokens (or the model's context) "
                        "and report them; by default over-long requests reach the simulator")
    g.add_argument("--input-len", default=None, metavar="DIST",
                   help="synthetic input length: N, uniform:LO:HI, lognormal:MEAN:CV")
    g.add_argument("--output-len", default=None, metavar="DIST", help="synthetic output length")
    g.add_argument("--tenants", default=None, metavar="SPEC",
                   help="zipf:N[:S], uniform:N, round-robin:N or session")
    g.add_argument("--slo", default=None, metavar="SPEC",
                   help="default SLO, e.g. ttft=1,tpot=50ms[,deadline=30]")
    g.add_argument("--slo-class", action="append", default=[], metavar="SPEC",
                   help="NAME,ttft=..,tpot=..,priority=P,when=input<4096,share=0.3 "
                        "(repeatable, first match wins)")
    g.add_argument("--programs-concurrent", type=int, default=None, metavar="P",
                   help="agents: closed population of P programs at once")
    g.add_argument("--workload-file", default=None, metavar="F",
                   help="inference-perf profile YAML/JSON (load.stages + data.shared_prefix)")
    g.add_argument("--servegen", default="reason_deepseek-r1", metavar="NAME|PATH",
                   help="ServeGen client data for --workload servegen")


def build_workload(args: argparse.Namespace, max_model_len: int | None = None) -> Workload:
    """The workload the flags describe (see :func:`add_workload_args`)."""
    kind = getattr(args, "workload", "trace") or "trace"
    dec = _decorator(args)
    if kind == "trace":
        return _trace_workload(args, dec, max_model_len)
    if kind in SYNTH:
        return _synth_workload(args, kind, dec, max_model_len)
    if kind in AGENTS:
        from sluice.workload.agents import agent_workload
        from sluice.workload.synth import Poisson
        pop = args.programs_concurrent
        arrivals = None if pop else Poisson(args.rate if args.rate else 0.1)
        return agent_workload(kind, programs=args.num_requests or 100, arrivals=arrivals,
                              population=pop, seed=args.seed, max_model_len=max_model_len,
                              decorator=dec)
    if kind == "servegen":
        from sluice.workload.servegen import servegen_workload
        return servegen_workload(args, dec)
    if kind == "inference-perf":
        from sluice.workload.inference_perf import load_profile
        if not args.workload_file:
            raise ConfigError("--workload inference-perf needs --workload-file PROFILE.yaml")
        return load_profile(args.workload_file, seed=args.seed, decorator=dec,
                            num_requests=args.num_requests)
    raise ConfigError(f"unknown workload {kind!r}; valid: {', '.join(WORKLOADS)}")


def _decorator(args: argparse.Namespace):
    from sluice.workload.tenancy import Decorator, TenantAssigner, parse_slo_rule
    return Decorator(
        tenants=TenantAssigner(args.tenants) if args.tenants else None,
        rules=[parse_slo_rule(s, default_name=f"class{i}") for i, s in enumerate(args.slo_class)],
        default=parse_slo_rule(args.slo) if args.slo else None)


def _max_context(args: argparse.Namespace, max_model_len: int | None) -> int | None:
    if args.max_context is None:
        return None
    if args.max_context == "model":
        if max_model_len is None:
            raise ConfigError("--max-context model: the model's context length is not known")
        return max_model_len
    try:
        return int(args.max_context)
    except ValueError:
        raise ConfigError(f"--max-context must be a token count or 'model', "
                          f"got {args.max_context!r}") from None


def open_trace(args: argparse.Namespace, default: str = DEFAULT_TRACE):
    from sluice.workload.traces import Trace, parse_columns
    return Trace(args.trace or default, args.trace_format,
                 columns=parse_columns(args.trace_columns) if args.trace_columns else None,
                 time_unit=args.time_unit, skip_bad_rows=args.skip_bad_rows, sort=args.sort)


def _trace_workload(args, dec, max_model_len):
    from sluice.workload.replay import ReplayOptions, TraceWorkload
    from sluice.workload.synth import parse_arrival
    from sluice.workload.transforms import parse_window
    trace = open_trace(args)
    arrivals = None
    target = args.rate
    if args.arrival or not trace.has_arrivals:
        arrivals = parse_arrival(args.arrival or "poisson", args.rate, args.cv)
        target = None  # the process already runs at --rate
    if args.rate is not None and not (args.rate > 0 and math.isfinite(args.rate)):
        raise ConfigError(f"--rate must be a positive number of req/s, got {args.rate}")
    opts = ReplayOptions(arrivals=arrivals,
                         window=parse_window(args.time_window) if args.time_window else None,
                         sample=args.sample, rate_scale=args.rate_scale, target_rate=target,
                         max_context=_max_context(args, max_model_len),
                         num_requests=args.num_requests, max_tokens=args.max_tokens)
    return TraceWorkload(trace, opts, seed=args.seed, decorator=dec)


def _synth_workload(args, kind, dec, max_model_len):
    from sluice.workload.lengths import PairSampler, pairs_from_trace, parse_length
    from sluice.workload.replay import SynthWorkload
    from sluice.workload.synth import parse_arrival
    if args.input_len or args.output_len:
        if not (args.input_len and args.output_len):
            raise ConfigError("give both --input-len and --output-len (or neither: lengths "
                              "are then drawn from --trace, default sharegpt)")
        lengths = PairSampler(parse_length(args.input_len), parse_length(args.output_len))
    else:
        lengths = PairSampler(pairs=pairs_from_trace(args.trace or "sharegpt"))
    n = args.num_requests
    if n is None and args.duration is None:
        n = 1000
    return SynthWorkload(parse_arrival(kind, args.rate, args.cv), lengths, num_requests=n,
                         duration=args.duration, seed=args.seed, max_tokens=args.max_tokens,
                         decorator=dec, name=kind)
