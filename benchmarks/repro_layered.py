"""Layered Prefill vs chunked prefill: the TTFT-TBT trade-off.

Chunked prefill (vLLM, Sarathi) bounds the stall a long prompt causes to decodes by the chunk
size, at the price of longer TTFT (more, smaller steps, each re-reading the prompt's KV so far).
Layered Prefill (2025) prefills the whole prompt a group of layers per step instead. We trace
the Pareto front of each: vLLM with token budgets 512..8192 vs ``layered_prefill`` with 2..16 of
Llama-3.1-8B's 32 layers per step. Workload: Azure conversation, Poisson 10 req/s.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from repro_common import run, savefig  # noqa: E402

FLAGS = "--trace azure-conv --arrival poisson --num-requests 1000 --rate 10"
CHUNKED = [512, 1024, 2048, 4096, 8192]
LAYERED = [2, 4, 8, 16]


def main() -> None:
    print(f"sluice simulate --policy vllm --max-num-batched-tokens B {FLAGS}  "
          f"# B in {CHUNKED}")
    print(f"sluice simulate --policy layered_prefill --policy-opt layers_per_step=G {FLAGS}  "
          f"# G in {LAYERED}")
    print("| config | mean TTFT ms | p99 TTFT ms | p99 TBT (ITL) ms | mean TPOT ms |")
    print("|---|---:|---:|---:|---:|")
    pts: dict[str, list[tuple[float, float]]] = {"chunked (vllm)": [], "layered_prefill": []}
    runs = ([("vllm", f"--max-num-batched-tokens {b}", f"vllm budget {b}", "chunked (vllm)")
             for b in CHUNKED]
            + [("layered_prefill", f"--policy-opt layers_per_step={g}",
                f"layered {g}/32 layers", "layered_prefill") for g in LAYERED])
    for pol, extra, label, series in runs:
        s = run(f"{FLAGS} {extra}", pol).summary
        print(f"| {label} | {s['mean_ttft_ms']:.0f} | {s['p99_ttft_ms']:.0f} | "
              f"{s['p99_itl_ms']:.1f} | {s['mean_tpot_ms']:.2f} |")
        pts[series].append((s["p99_itl_ms"], s["mean_ttft_ms"]))
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for series, xy in pts.items():
        ax.plot([x for x, _ in xy], [y for _, y in xy], "o-", label=series)
    ax.set_xlabel("p99 TBT (ms)")
    ax.set_ylabel("mean TTFT (ms)")
    ax.set_title("Layered vs chunked prefill, Azure conv 10 req/s", fontsize=9)
    ax.legend(fontsize=8)
    savefig(fig, "repro_layered.png")


if __name__ == "__main__":
    main()
