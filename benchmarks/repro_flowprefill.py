"""EDF / FlowPrefill vs vLLM and Sarathi: max goodput under heterogeneous TTFT SLOs.

FlowPrefill (2025) reports up to 5.6x max goodput. Workload: Azure code prompts (p50 1.5k,
p90 5.2k tokens) with Poisson arrivals; short prompts (<2048) must see their first token in
100 ms, long ones in 5 s; both 100 ms TPOT. Max goodput = the highest rate at which >= 90% of
requests meet their SLO (``sluice sweep``). Second setting: a prefill-only node
(``--max-tokens 1``, TTFT SLOs only), closer to FlowPrefill's evaluation.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from repro_common import plot_sweep, savefig, sweep  # noqa: E402

POLICIES = ["vllm", "sarathi", "edf", "flowprefill"]
SETTINGS = {
    "colocated": ("--trace azure-code --arrival poisson --num-requests 800 "
                  "--slo-class short,ttft=100ms,tpot=100ms,when=input<2048 "
                  "--slo-class long,ttft=5,tpot=100ms", [2, 4, 6, 8, 10, 12, 14]),
    "prefill-only": ("--trace azure-code --arrival poisson --num-requests 800 --max-tokens 1 "
                     "--slo-class short,ttft=100ms,when=input<2048 --slo-class long,ttft=5",
                     [2, 4, 6, 8, 10, 12, 16]),
}


def main() -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, (name, (flags, rates)) in zip(axes, SETTINGS.items()):
        res = sweep(flags, POLICIES, rates)
        rs = ",".join(map(str, rates))
        print(f"\n{name}: sluice sweep --policies {','.join(POLICIES)} --rates {rs} {flags}")
        print("| policy | " + " | ".join(f"{r} req/s" for r in rates) + " | max goodput |")
        print("|---|" + "---:|" * (len(rates) + 1))
        for pol in POLICIES:
            att = [p["attainment"] for p in res["points"] if p["policy"] == pol]
            print(f"| {pol} | " + " | ".join(f"{a:.1%}" for a in att)
                  + f" | {res['max_goodput'][pol]} |")
        plot_sweep(ax, res, f"{name}: short TTFT 100 ms, long 5 s")
    savefig(fig, "repro_flowprefill.png")


if __name__ == "__main__":
    main()
