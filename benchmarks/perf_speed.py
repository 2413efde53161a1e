"""How long pricing a step takes: step_time per call and decode_run per fast-forwarded step.

    python benchmarks/perf_speed.py
"""

from __future__ import annotations

import random
import time

from sluice.core.plan import BatchStats
from sluice.perf.registry import build_perf_model


def main() -> None:
    rng = random.Random(0)
    for model, gpu, tp in [("llama-3.1-8b", "h100", 1), ("qwen3-30b-a3b", "h100", 2)]:
        pm = build_perf_model(model, gpu, tp=tp)
        steps = []
        for _ in range(2000):
            p = rng.choice([0, 0, 0, 256, 2048])
            d = rng.randint(1, 256)
            steps.append(BatchStats(prefill_tokens=p, prefill_seqs=1 if p else 0,
                                    prefill_attn=p * (p + 1) / 2, decode_seqs=d,
                                    decode_ctx=d * rng.randint(100, 4000)))
        t0 = time.perf_counter()
        for _ in range(20):
            for s in steps:
                pm.step_time(s)
        per_step = (time.perf_counter() - t0) / (20 * len(steps))
        t0 = time.perf_counter()
        for _ in range(2000):
            pm.decode_run(64, 64 * 1000, 256)
        per_ff = (time.perf_counter() - t0) / (2000 * 256)
        print(f"{pm.name}: step_time {per_step * 1e6:.2f} us/call, "
              f"decode_run {per_ff * 1e9:.0f} ns/step (k=256)")


if __name__ == "__main__":
    main()
