"""Preemptive priority with swap vs recompute (FastSwitch, Shen et al. 2024).

FastSwitch reports 1.4-11.2x better tail TTFT/TBT than vLLM for high-priority requests, from
preemption plus swap that is cheap because KV blocks are allocated in contiguous groups. Setup:
20% of requests are class ``high`` (priority 0), the rest ``low`` (priority 1); the KV cache is
cut to 3000 blocks (48k tokens) so that memory, not compute, is the contended resource.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from repro_common import pct, run, savefig, ttfts_ms  # noqa: E402

FLAGS = ("--trace azure-conv --num-requests 1500 --rate 12 --num-gpu-blocks 3000 "
         "--slo-class high,priority=0,share=0.2 --slo-class low,priority=1")
# FastSwitch overlaps swap-out with compute: the last run (--swap-overlap)
RUNS = [("vllm", ""), ("priority", ""), ("preemptive", ""),
        ("preemptive", " --preemption-mode recompute"), ("preemptive", " --swap-overlap")]
LABELS = {" --preemption-mode recompute": " (recompute)", " --swap-overlap": " (swap, overlapped)"}


def main() -> None:
    print(f"sluice compare --policies vllm,priority,preemptive {FLAGS} --out OUT")
    print(f"sluice simulate --policy preemptive {FLAGS} --preemption-mode recompute --out OUT2")
    print(f"sluice simulate --policy preemptive {FLAGS} --swap-overlap --out OUT3")
    print("| run | high p99 TTFT ms | high p90 TTFT ms | all p99 TTFT ms | p99 ITL ms | "
          "preemptions | req/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    bars = {}
    hi = lambda r: r.slo_class == "high"  # noqa: E731
    for pol, extra in RUNS:
        res = run(FLAGS + extra, pol)
        s = res.summary
        label = pol + LABELS.get(extra, " (swap)" if pol == "preemptive" else "")
        bars[label] = pct(ttfts_ms(res, hi), 99)
        print(f"| {label} | {bars[label]:.0f} | {pct(ttfts_ms(res, hi), 90):.0f} | "
              f"{pct(ttfts_ms(res), 99):.0f} | {s['p99_itl_ms']:.1f} | {s['preemptions']} | "
              f"{s['request_throughput']:.2f} |")
    fig, ax = plt.subplots(figsize=(7, 3.4))
    ax.bar(list(bars), list(bars.values()),
           color=["grey", "tab:blue", "tab:green", "tab:olive", "tab:cyan"])
    ax.set_yscale("log")
    ax.set_ylabel("high-priority p99 TTFT (ms)")
    ax.set_title("Preemptive priority, 3000 KV blocks, 12 req/s")
    ax.tick_params(axis="x", labelsize=8, labelrotation=15)
    savefig(fig, "repro_preemptive.png")


if __name__ == "__main__":
    main()
