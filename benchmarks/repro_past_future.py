"""Past-Future admission vs aggressive (vLLM) and conservative (max_tokens) admission.

LightLLM's Past-Future scheduler reports 2-3x goodput under heavy load. Setup that stresses
memory: 512-token prompts, long lognormal outputs (mean 1000, CV 0.8), every request
``max_tokens=4096``, KV cut to 2000 blocks (32k tokens); SLO TTFT 5 s, TPOT 100 ms.
*Aggressive* = ``vllm`` (admit while blocks are free now, recompute on shortage);
*conservative* = ``past_future`` with ``predictor=none`` (reserve up to max_tokens);
``past_future`` = history median; with ``predictor=oracle`` as the upper bound.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from repro_common import run, savefig  # noqa: E402

FLAGS = ("--workload poisson --input-len 512 --output-len lognormal:1000:0.8 --num-requests 400 "
         "--max-tokens 4096 --num-gpu-blocks 2000 --slo ttft=5,tpot=100ms")
RATES = [1.0, 1.5, 2.0, 3.0]
RUNS = [("vllm", "", "aggressive (vllm)"),
        ("past_future", " --policy-opt predictor=none", "conservative (max_tokens)"),
        ("past_future", "", "past_future (history)"),
        ("past_future", " --policy-opt predictor=oracle", "past_future (oracle)")]


def main() -> None:
    print(f"sluice sweep --policies vllm,past_future --rates {','.join(map(str, RATES))} {FLAGS}")
    print(f"sluice sweep --policy past_future --policy-opt predictor=none|oracle --rates .. "
          f"{FLAGS}")
    print("| admission | " + " | ".join(f"{r} req/s" for r in RATES)
          + " | preemptions at 2 req/s |")
    print("|---|" + "---:|" * (len(RATES) + 1))
    curves = {}
    for pol, extra, label in RUNS:
        vals, pre = [], 0
        for r in RATES:
            s = run(f"{FLAGS} --rate {r}{extra}", pol).summary
            vals.append(s["slo_attainment"] * s["num_requests"] / s["duration"])
            if r == 2.0:
                pre = s["preemptions"]
        curves[label] = vals
        print(f"| {label} | " + " | ".join(f"{g:.2f}/s" for g in vals) + f" | {pre} |")
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for label, vals in curves.items():
        ax.plot(RATES, vals, "o-", label=label)
    ax.set_xlabel("offered load (req/s)")
    ax.set_ylabel("goodput (req/s meeting SLO)")
    ax.set_title("Admission control, 2000 KV blocks, max_tokens 4096", fontsize=9)
    ax.legend(fontsize=7)
    savefig(fig, "repro_past_future.png")


if __name__ == "__main__":
    main()
