"""LAPS vs vLLM on a long/short prompt mix (LAPS reports >30% lower prefill latency).

Azure code prompts (p50 1.5k, p90 5.2k tokens, short outputs) with Poisson arrivals at loads
where a queue forms; LAPS serves prompts <= 2048 tokens from their own queue first. Prefill
latency = TTFT.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from repro_common import run, savefig, ttfts_ms  # noqa: E402

FLAGS = "--trace azure-code --arrival poisson --num-requests 800"
RATES = [10, 14, 18]


def main() -> None:
    print(f"sluice compare --policies vllm,laps {FLAGS} --rate R  # R in {RATES}")
    print("| rate | policy | mean TTFT ms | median TTFT ms | short-prompt mean TTFT ms | "
          "long-prompt mean TTFT ms |")
    print("|---:|---|---:|---:|---:|---:|")
    bars: dict[str, list[float]] = {"vllm": [], "laps": []}
    for r in RATES:
        for pol in ("vllm", "laps"):
            res = run(f"{FLAGS} --rate {r}", pol)
            s = res.summary
            short = ttfts_ms(res, lambda x: x.prompt_tokens <= 2048)
            long_ = ttfts_ms(res, lambda x: x.prompt_tokens > 2048)
            bars[pol].append(s["mean_ttft_ms"])
            print(f"| {r} | {pol} | {s['mean_ttft_ms']:.0f} | {s['median_ttft_ms']:.0f} | "
                  f"{sum(short) / len(short):.0f} | {sum(long_) / len(long_):.0f} |")
    fig, ax = plt.subplots(figsize=(5, 3.2))
    w = 0.38
    xs = range(len(RATES))
    ax.bar([x - w / 2 for x in xs], bars["vllm"], w, label="vllm")
    ax.bar([x + w / 2 for x in xs], bars["laps"], w, label="laps")
    ax.set_xticks(list(xs), [f"{r} req/s" for r in RATES])
    ax.set_ylabel("mean TTFT (ms)")
    ax.set_title("LAPS vs vLLM, Azure code prompts")
    ax.legend()
    savefig(fig, "repro_laps.png")


if __name__ == "__main__":
    main()
