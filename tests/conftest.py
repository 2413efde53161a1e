"""Shared test helpers: a tiny deterministic perf model and request builders."""

from __future__ import annotations

import numpy as np
import pytest

from sluice.core.content import Content
from sluice.core.plan import BatchStats
from sluice.core.request import SLO, Request


class LinearPerf:
    """step = a + b*tokens + c*attention pairs + d*KV read: simple, monotone, exact in numpy."""

    num_layers = 4
    max_model_len = 8192
    kv_bytes_per_token = 1024
    name = "linear-test"

    def __init__(self, blocks: int = 4096, a: float = 5e-3, b: float = 1e-5,
                 c: float = 1e-9, d: float = 1e-7) -> None:
        self.blocks, self.a, self.b, self.c, self.d = blocks, a, b, c, d

    def step_time(self, s: BatchStats) -> float:
        return (self.a + self.b * (s.prefill_tokens + s.decode_seqs) + self.c * s.prefill_attn
                + self.d * s.decode_ctx)

    def decode_run(self, batch: int, ctx_sum: int, k: int) -> np.ndarray:
        ctx = ctx_sum + np.arange(k, dtype=np.float64) * batch
        return self.a + self.b * (0.0 + batch) + self.c * 0.0 + self.d * ctx

    def swap_time(self, blocks: int, runs: int) -> float:
        return 1e-5 * runs + 2e-7 * blocks

    def kv_capacity_blocks(self, block_size: int) -> int:
        return self.blocks


@pytest.fixture
def linear_perf() -> LinearPerf:
    return LinearPerf()


def make_request(rid: int, arrival: float, prompt: int, output: int, *, key: int | None = None,
                 prefix: tuple[int, int] | None = None, user: str = "default",
                 max_tokens: int | None = None, priority: int = 0,
                 slo: SLO | None = None) -> Request:
    """A virtual-content request: optional shared ``prefix`` (key, length) then unique tokens."""
    segs = []
    if prefix is not None:
        segs.append(prefix)
    segs.append((key if key is not None else 10_000_000 + rid, prompt - (prefix[1] if prefix else 0)))
    return Request(id=rid, arrival=arrival, content=Content(segments=segs),
                   max_tokens=max_tokens if max_tokens is not None else output,
                   user=user, priority=priority, slo=slo, true_output=output)
