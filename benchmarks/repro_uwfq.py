"""UWFQ: a user sending 10x more requests of the same size gets no more than its weighted share.

``--tenants zipf:2:3.3219`` gives t0 10/11 and t1 1/11 of the requests (2^3.3219 = 10). Both
users are backlogged: t1 alone (40 req/s) wants more than half of the ~45 req/s this deployment
serves for 512/128-token requests. We measure each user's share of the service (input + 2 x
output tokens, VTC's measure) received while both are backlogged (the finished in 5-15 s).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from repro_common import command, run, savefig  # noqa: E402

FLAGS = ("--workload poisson --input-len 512 --output-len 128 --num-requests 6600 --rate 440 "
         "--tenants zipf:2:3.3219")
WINDOW = (5.0, 15.0)


def share_t1(res) -> float:
    """t1's share of the service of requests finished inside the window."""
    s = {"t0": 0.0, "t1": 0.0}
    for r in res.records:
        if r.completed and WINDOW[0] <= r.finish <= WINDOW[1]:
            s[r.user] += r.prompt_tokens + 2 * r.output_tokens
    return s["t1"] / (s["t0"] + s["t1"])


def main() -> None:
    print(command("compare", FLAGS, "vllm,vtc,uwfq"), "--out OUT")
    print("| policy | t1 share of service, finished in 5-15 s | t1 p90 TTFT ms | t0 p90 TTFT ms |")
    print("|---|---:|---:|---:|")
    shares = {}
    from repro_common import pct, ttfts_ms
    for pol in ("vllm", "vtc", "uwfq"):
        res = run(FLAGS, pol)
        shares[pol] = share_t1(res)
        print(f"| {pol} | {shares[pol]:.1%} | "
              f"{pct(ttfts_ms(res, lambda r: r.user == 't1'), 90):.0f} | "
              f"{pct(ttfts_ms(res, lambda r: r.user == 't0'), 90):.0f} |")
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(list(shares), [100 * v for v in shares.values()], color="tab:blue", label="t1 (light)")
    ax.bar(list(shares), [100 * (1 - v) for v in shares.values()],
           bottom=[100 * v for v in shares.values()], color="tab:orange", label="t0 (10x)")
    ax.axhline(50, color="k", ls="--", lw=1)
    ax.set_ylabel("share of service while both backlogged (%)")
    ax.set_title("UWFQ: t0 sends 10x the requests of t1")
    ax.legend(loc="lower right")
    savefig(fig, "repro_uwfq.png")


if __name__ == "__main__":
    main()
