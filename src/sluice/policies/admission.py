"""Past-Future admission (LightLLM's Past-Future scheduler, Gong et al. 2025).

Why: admitting whenever the KV cache has room *now* (vLLM, "aggressive") over-commits memory
and pays later in preemptions and recompute; reserving ``max_tokens`` for every request
(Orca, "conservative") wastes most of the cache because real outputs are far shorter. Past-Future
admits a request only if the *predicted peak* KV use of the running batch plus it fits:

* past - the output lengths of finished requests (the history predictor, a high quantile of the
  lengths longer than what each request has already generated; default the median: the
  batch's peak is a sum over many requests, so per-request tail quantiles over-reserve);
* future - with each running request's predicted remaining output ``rem_i`` and current tokens
  ``cur_i``, sorted by ``rem``, memory peaks at one of the finishing times:
  ``peak = max_j sum_{i: rem_i >= rem_j} (cur_i + rem_j)``.

Parameters: ``quantile`` of the history (default 0.5), ``reserve`` = share of blocks kept free as
a margin (default 0.03), plus the predictor options. Pure admission: its order is FCFS, so it
composes in front of any ordering (``past_future+sjf``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sluice.core.request import Request
from sluice.errors import ConfigError
from sluice.policies.base import View, register
from sluice.policies.compose import Ranked
from sluice.policies.predictors import PREDICTOR_OPTIONS, predictor_from


def peak_tokens(cur: np.ndarray, rem: np.ndarray) -> float:
    """Peak of ``sum_i (cur_i + min(t, rem_i))`` over time ``t``, requests leaving at ``rem_i``."""
    if cur.size == 0:
        return 0.0
    order = np.argsort(rem, kind="stable")
    cur, rem = cur[order], rem[order]
    alive_cur = np.cumsum(cur[::-1])[::-1]  # sum of cur_i over requests still alive at rem_j
    alive_n = np.arange(cur.size, 0, -1)
    # requests that finished before rem_j have freed their KV: they add nothing then
    return float(np.max(alive_cur + alive_n * rem))


@register("past_future")
class PastFuture(Ranked):
    static_key = True
    defaults = {"reserve": 0.03, **PREDICTOR_OPTIONS}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.fraction("quantile")
        r = self.opts["reserve"]
        if not isinstance(r, (int, float)) or not 0 <= r < 1:
            raise ConfigError(f"policy 'past_future': reserve must be in [0, 1), got {r!r}")
        self.reserve = float(r)
        self.predictor = predictor_from(self.opts)

    def predicted_peak_blocks(self, batch: list[Request], block_size: int) -> float:
        cur = np.array([r.num_tokens for r in batch], dtype=np.float64)
        rem = np.array([self.predictor.remaining(r) for r in batch], dtype=np.float64)
        # + one partly filled block per request
        return peak_tokens(cur, rem) / block_size + len(batch)

    def admit(self, req: Request, view: View) -> bool:
        if not view.running:
            return True  # never deadlock: an empty batch always takes the next request
        peak = self.predicted_peak_blocks([*view.running, req], view.block_size)
        return peak <= view.total_blocks * (1.0 - self.reserve)

    def on_finish(self, req: Request, view: View) -> None:
        self.predictor.observe(req)
