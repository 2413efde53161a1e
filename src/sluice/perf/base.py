"""The PerfModel interface: what a step of a given batch costs on a deployment.

Every model (roofline, fitted, calibrated) implements :class:`PerfModel`. The simulated
executor calls ``step_time`` once per step and ``decode_run`` to price ``k`` identical-shape
decode-only steps at once during fast-forward (DESIGN §4), so a model must make both agree:
``decode_run(b, c, k)[i] == step_time`` of a decode step with ``b`` sequences and total context
``c + i*b``. The default ``decode_run`` guarantees that by construction; vectorised overrides
must keep it exact.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from sluice.core.plan import BatchStats


@runtime_checkable
class PerfModel(Protocol):
    num_layers: int

    def step_time(self, stats: BatchStats) -> float:
        """Seconds for one engine step of this batch (compute, attention, comms, overhead)."""

    def decode_run(self, batch: int, ctx_sum: int, k: int) -> np.ndarray:
        """Durations of ``k`` consecutive decode-only steps; context grows by ``batch`` each."""

    def swap_time(self, blocks: int, contiguous_runs: int) -> float:
        """Seconds to move ``blocks`` KV blocks between GPU and host in ``contiguous_runs``."""

    def kv_capacity_blocks(self, block_size: int) -> int:
        """KV blocks that fit on the device after weights and reserves."""


@runtime_checkable
class ExpertParallelModel(Protocol):
    """Optional hook of a PerfModel for one rank of vLLM data parallel + expert parallel.

    By default a rank's MoE layers are priced as if every one of the ``ep`` ranks carried this
    rank's token count: vLLM pads the DP ranks to the largest one when the step runs a CUDA
    graph. For a step that is not padded the lock step (``sim.lockstep``) calls
    ``step_time(stats, moe_ranks=counts)`` with every rank's actual token count, which vLLM's
    all-gather dispatch exchanges. ``moe_ranks=None`` must be plain ``step_time``."""

    ep: int

    def step_time(self, stats: BatchStats, moe_ranks: tuple[float, ...] | None = None) -> float:
        """Seconds for one step whose MoE layers serve the tokens of all ``moe_ranks``."""


def decode_stats(batch: int, ctx_sum: int) -> BatchStats:
    return BatchStats(decode_seqs=batch, decode_ctx=ctx_sum)


def decode_run_by_steps(model: PerfModel, batch: int, ctx_sum: int, k: int) -> np.ndarray:
    """Reference implementation of ``decode_run`` (one ``step_time`` call per step)."""
    return np.array([model.step_time(decode_stats(batch, ctx_sum + i * batch)) for i in range(k)],
                    dtype=np.float64)
