"""VTC vs vLLM: two tenants, one sending 4x its share (Sheng et al., OSDI'24).

Claim to check: the well-behaved tenant's p90 TTFT under ``vtc`` stays within 1.5x of its value
when it runs alone; under ``vllm`` (FCFS) it grows by more than 5x.
Tenants by rule: ``--tenants zipf:2:2`` gives t0 80% and t1 20% of the requests (t0 sends 4x
t1). 20 req/s overloads one H100 with Llama-3.1-8B on this trace (~15 req/s), while t1's
4 req/s alone is light.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from repro_common import command, pct, run, run_filtered, savefig, ttfts_ms  # noqa: E402

FLAGS = "--trace azure-conv --num-requests 1500 --rate 20 --tenants zipf:2:2"


def main() -> None:
    good = lambda r: r.user == "t1"  # noqa: E731
    alone = run_filtered(FLAGS, "vtc", good)
    p_alone = pct(ttfts_ms(alone), 90)
    rows = {"alone (vtc)": p_alone}
    heavy = {"alone (vtc)": float("nan")}
    for pol in ("vllm", "vtc"):
        res = run(FLAGS, pol)
        rows[pol] = pct(ttfts_ms(res, good), 90)
        heavy[pol] = pct(ttfts_ms(res, lambda r: r.user == "t0"), 90)
    print(command("compare", FLAGS, "vllm,vtc"), "--out OUT  # t1 rows of OUT/requests-*.csv")
    print("| run | t1 (well-behaved) p90 TTFT ms | x alone | t0 (4x) p90 TTFT ms |")
    print("|---|---:|---:|---:|")
    for k, v in rows.items():
        print(f"| {k} | {v:.0f} | {v / p_alone:.2f} | {heavy[k]:.0f} |")
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(list(rows), list(rows.values()), color=["grey", "tab:red", "tab:green"])
    ax.set_yscale("log")
    ax.set_ylabel("well-behaved tenant p90 TTFT (ms)")
    ax.set_title("VTC vs vLLM: t0 sends 4x t1, 20 req/s")
    savefig(fig, "repro_vtc.png")


if __name__ == "__main__":
    main()
