"""``sluice perf validate | fit | calibrate``: the performance model's command line.

The main CLI calls :func:`add_parser` and then ``args.func(args)``; errors are
:class:`~sluice.errors.SluiceError` (one line, exit code 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sluice.errors import ConfigError


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("perf", help="performance model: validate, fit, calibrate",
                              description="Validate, refit or calibrate the GPU performance model.")
    sub = p.add_subparsers(dest="perf_command", metavar="{validate,fit,calibrate}")
    sub.required = True

    v = sub.add_parser("validate", help="held-out MAPE per operator/GPU/model, KV capacity, "
                       "end-to-end replay of real vLLM runs")
    v.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    v.add_argument("--no-e2e", dest="e2e", action="store_false",
                   help="skip the end-to-end replay through the simulator")
    v.add_argument("--plot", default=None, metavar="PNG",
                   help="write a predicted-vs-measured scatter plot (needs matplotlib)")
    v.set_defaults(func=cmd_validate)

    f = sub.add_parser("fit", help="refit the coefficients from the shipped measured tables")
    f.add_argument("--shared", default=None, metavar="DIR",
                   help="re-extract the measured tables from the raw datasets under DIR first")
    f.add_argument("--out", default=None, metavar="F", help="coefficient file (default: package data)")
    f.add_argument("--json", action="store_true")
    f.set_defaults(func=cmd_fit)

    c = sub.add_parser("calibrate", help="fit deployment coefficients from a step log (JSONL)")
    c.add_argument("--from", dest="steps", required=True, metavar="STEPS.jsonl",
                   help="one JSON object per step: BatchStats fields + duration_s")
    c.add_argument("--out", default="sluice-calibration.json", metavar="F")
    c.add_argument("--model", default=None, help="model of the logged deployment")
    c.add_argument("--gpu", default=None, help="GPU of the logged deployment")
    c.add_argument("--tp", type=int, default=None)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_calibrate)


def _emit(obj: dict[str, Any], as_json: bool, text: str) -> None:
    if as_json:
        sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    else:
        sys.stdout.write(text + "\n")


def cmd_validate(args: argparse.Namespace) -> int:
    from sluice.perf.validate import run_validate

    report, rows = run_validate(e2e=args.e2e)
    _emit(report, args.json, format_report(report))
    if args.plot:
        plot_rows(rows, args.plot)
    return 0


def plot_rows(rows: list, path: str) -> None:
    """Predicted vs measured, log-log, coloured by operator class."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--plot needs matplotlib (pip install 'sluice[plot]')") from None
    fig, ax = plt.subplots(figsize=(6.5, 6))
    classes = sorted({r[0] for r in rows})
    for cls in classes:
        xs = [r[4] * 1e6 for r in rows if r[0] == cls]
        ys = [r[3] * 1e6 for r in rows if r[0] == cls]
        ax.scatter(xs, ys, s=3, alpha=0.35, label=f"{cls} (n={len(xs)})")
    lo = min(min(r[3], r[4]) for r in rows) * 1e6
    hi = max(max(r[3], r[4]) for r in rows) * 1e6
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured (µs)")
    ax.set_ylabel("predicted (µs)")
    ax.set_title("sluice fitted perf model, held-out models")
    ax.legend(markerscale=4, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _named_line(h: dict[str, Any]) -> str:
    nm = h["named_models"]
    return (f"  named held-out models only (no grid shapes): overall {nm['mape']} (median APE "
            f"{nm['median_ape']}, n={nm['n']})  " +
            "  ".join(f"{k} {v['mape']} ({v['n']})" for k, v in nm["by_op"].items()))


def _source_line(h: dict[str, Any]) -> str:
    return "  gpu: named models | grid shapes  " + "  ".join(
        f"{g} {v['named_models']['mape']} ({v['named_models']['n']}) | "
        f"{v['grid_shapes']['mape']} ({v['grid_shapes']['n']})" for g, v in h["by_gpu_source"].items())


def format_report(r: dict[str, Any]) -> str:
    out = []
    h = r["heldout_models"]
    out.append(f"held-out rows: models + 30% of grid shapes (MAPE %, n rows): overall {h['overall']['mape']} "
               f"(median APE {h['overall']['median_ape']}, n={h['overall']['n']}, "
               f"mean of op classes {h['overall']['mean_of_op_classes']})")
    for key in ("by_op", "by_gpu", "by_model"):
        out.append(f"  {key[3:]:6s} " + "  ".join(f"{k} {v['mape']} ({v['n']})" for k, v in h[key].items()))
    out.append(_named_line(h))
    if h.get("by_gpu_source"):
        out.append(_source_line(h))
    lv = h.get("layer_level") or {}
    if lv:
        out.append(f"  layer level (projection GEMMs [+ attention] of one layer, held-out models): "
                   f"overall {lv['overall']['mape']}  " +
                   "  ".join(f"{k} {v['mape']} ({v['n']})" for k, v in lv["by_op"].items()) + "  | " +
                   "  ".join(f"{k} {v['mape']}" for k, v in lv["by_model"].items()))
    u = r["unseen_gpu"]
    out.append(f"unseen GPU (coefficients from the other GPUs' prior): overall {u['overall'].get('mape')}"
               f" (median APE {u['overall'].get('median_ape')})")
    out.append("  gpu    " + "  ".join(f"{k} {v.get('mape')}" for k, v in u["by_gpu"].items() if v))
    if u.get("by_op"):
        out.append("  op     " + "  ".join(f"{k} {v['mape']} ({v['n']})" for k, v in u["by_op"].items()))
    if u.get("named_models"):
        out.append(_named_line(u))
        out.append(_source_line(u))
    ul = u.get("layer_level") or {}
    if ul:
        out.append(f"  layer level: overall {ul['overall']['mape']}  " +
                   "  ".join(f"{k} {v['mape']}" for k, v in ul["by_gpu"].items()))
    kv = r["kv_capacity"]
    out.append(f"KV capacity vs real vLLM runs: max |error| {kv['max_abs_error_pct']}%  " +
               "  ".join(f"{x['model']}/{x['gpu']}x{x['tp']} {x['error_pct']:+}%" for x in kv["runs"]))
    sw = r["splitwise_steps"]
    out.append(f"Splitwise Llama-2-70B steps: prefill MAPE {sw['prefill']['mape']}, decode MAPE "
               f"{sw['decode']['mape']} ({sw['note']})")
    e2e = r.get("end_to_end")
    if e2e:
        if "skipped" in e2e:
            out.append(f"end to end: skipped ({e2e['skipped']})")
        else:
            out.append("end to end (real vLLM 0.19 runs; sim vs measured, mean / p90 error %):")
            for run, row in e2e.items():
                out.append(f"  {run:42s} " + "  ".join(
                    f"{k.upper()} {row[k]['mean_err_pct']:+.1f}/{row[k]['p90_err_pct']:+.1f}"
                    for k in ("ttft", "tpot", "e2e"))
                    + (f"  [{row['dp_model']}]" if row.get("dp", 1) > 1 else ""))
    return "\n".join(out)


def cmd_fit(args: argparse.Namespace) -> int:
    from sluice.perf.fit import run_fit

    shared = Path(args.shared) if args.shared else None
    if shared is not None and not shared.is_dir():
        raise ConfigError(f"--shared {args.shared!r} is not a directory")
    res = run_fit(shared, Path(args.out) if args.out else None)
    _emit(res, args.json, f"wrote {res['written']} (GPUs: {', '.join(res['gpus'])}; rows {res['rows']})")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from sluice.perf.calibrate import calibrate

    doc = calibrate(args.steps, args.out, model=args.model, gpu=args.gpu, tp=args.tp)
    _emit(doc, args.json, f"wrote {args.out}: scale {doc['coeffs']['scale']:.3f}, step overhead "
          f"{doc['coeffs']['step_overhead'] * 1e3:.3f} ms, per-sequence "
          f"{doc['coeffs']['seq_overhead'] * 1e6:.1f} us; MAPE {doc['fit']['mape_before_pct']}% -> "
          f"{doc['fit']['mape_after_pct']}% on {doc['steps']} steps")
    return 0
