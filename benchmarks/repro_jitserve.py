"""JITServe vs vLLM: goodput with imprecise output lengths (JITServe reports 1.4-6.3x).

Azure conversation lengths, Poisson arrivals, every request ``max_tokens=2048`` (so the length
is *not* known in advance: the true output is the trace's, usually far shorter), SLO TTFT 2 s and
TPOT 60 ms. ``jitserve`` uses the history predictor (0.9 quantile of finished outputs longer
than what the request already generated); ``jitserve`` with ``predictor=oracle`` is the upper
bound. Goodput = requests/s that met their SLO.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from repro_common import run, savefig  # noqa: E402

FLAGS = ("--trace azure-conv --arrival poisson --num-requests 1500 --max-tokens 2048 "
         "--slo ttft=2,tpot=60ms")
RATES = [12, 16, 20, 26]
RUNS = [("vllm", ""), ("sjf", ""), ("jitserve", ""),
        ("jitserve", " --policy-opt predictor=oracle")]


def main() -> None:
    print(f"sluice sweep --policies vllm,sjf,jitserve --rates {','.join(map(str, RATES))} "
          f"{FLAGS}")
    print(f"sluice sweep --policy jitserve --policy-opt predictor=oracle --rates "
          f"{','.join(map(str, RATES))} {FLAGS}")
    print("| policy | " + " | ".join(f"{r} req/s" for r in RATES) + " |")
    print("|---|" + "---:|" * len(RATES))
    curves = {}
    for pol, extra in RUNS:
        label = pol + (" (oracle)" if extra else "")
        vals = []
        for r in RATES:
            s = run(f"{FLAGS} --rate {r}{extra}", pol).summary
            vals.append((s["slo_attainment"], s["slo_attainment"] * s["num_requests"]
                         / s["duration"]))
        curves[label] = vals
        print(f"| {label} | " + " | ".join(f"{a:.1%} ({g:.2f}/s)" for a, g in vals) + " |")
    base = curves["vllm"]
    print("jitserve / vllm goodput: " + ", ".join(
        f"{r}: {j[1] / b[1]:.2f}x" for r, j, b in zip(RATES, curves["jitserve"], base)))
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for label, vals in curves.items():
        ax.plot(RATES, [g for _a, g in vals], "o-", label=label)
    ax.set_xlabel("offered load (req/s)")
    ax.set_ylabel("goodput (req/s meeting SLO)")
    ax.set_title("JITServe vs vLLM, max_tokens=2048, TTFT 2 s / TPOT 60 ms", fontsize=9)
    ax.legend(fontsize=8)
    savefig(fig, "repro_jitserve.png")


if __name__ == "__main__":
    main()
