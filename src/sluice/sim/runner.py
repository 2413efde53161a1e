"""Build a simulated replica from a config and run a workload through it.

This is the programmatic face of ``sluice simulate``: ``run_simulation(SimConfig(...), workload)``
returns per-request records and the summary dict that ``--json`` prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from sluice.core.config import SchedulerConfig
from sluice.core.engine import Engine
from sluice.core.kv import KVCache
from sluice.core.request import Request
from sluice.core.scheduler import Scheduler
from sluice.errors import ConfigError
from sluice.executors.simulated import SimulatedExecutor
from sluice.metrics.records import RequestRecord
from sluice.metrics.sample import WeightedSample, itl_sample, merged
from sluice.metrics.summary import summarize
from sluice.perf.base import PerfModel
from sluice.policies.base import make_policy
from sluice.sim.loop import SimLoop
from sluice.workload.base import Workload

GIB = 1 << 30


@dataclass
class SimConfig:
    model: str = "llama-3.1-8b"
    gpu: str = "h100"
    tp: int = 1
    policy: str = "vllm"
    policy_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    enable_chunked_prefill: bool | None = None
    enable_prefix_caching: bool | None = None
    preemption_mode: str | None = None
    kv_reservation: str | None = None
    long_prefill_token_threshold: int | None = None
    block_size: int = 16
    num_gpu_blocks: int | None = None
    swap_space_gib: float = 4.0
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.9
    perf_kind: str = "fitted"
    perf: PerfModel | None = None  # a ready model overrides model/gpu/tp/perf_kind
    fast_forward: bool = True
    swap_overlap: bool = False
    goodput: dict[str, float] = field(default_factory=dict)
    dp: int = 1  # data-parallel ranks (vLLM data_parallel_size); > 1 steps them in lock step
    expert_parallel: bool = False  # vLLM enable_expert_parallel: experts split over the dp ranks
    dp_balancer: str = "vllm"  # how arrivals are spread over the ranks (sim.lockstep.BALANCERS)


@dataclass
class SimResult:
    config: SimConfig
    records: list[RequestRecord]
    summary: dict
    itls: WeightedSample
    kv_samples: list[tuple[float, int]]
    loop_stats: dict


def build_perf(cfg: SimConfig) -> PerfModel:
    if cfg.perf is not None:
        return cfg.perf
    if cfg.tp < 1:
        raise ConfigError(f"--tp must be >= 1, got {cfg.tp}")
    from sluice.perf.registry import build_perf_model

    extra = {"ep": cfg.dp} if cfg.expert_parallel and cfg.dp > 1 else {}
    return build_perf_model(cfg.model, cfg.gpu, tp=cfg.tp, kind=cfg.perf_kind,
                            gpu_memory_utilization=cfg.gpu_memory_utilization,
                            max_model_len=cfg.max_model_len,
                            max_num_batched_tokens=_knob(cfg, "max_num_batched_tokens"),
                            max_num_seqs=_knob(cfg, "max_num_seqs"), **extra)


def _knob(cfg: SimConfig, name: str) -> int | None:
    """The user's value, else the policy's default (None: the perf model's vLLM default).
    These size vLLM's activation reserve, hence the KV capacity."""
    value = getattr(cfg, name)
    if value is None and "+" not in cfg.policy:
        from sluice.policies.base import get_policy_class

        value = get_policy_class(cfg.policy).scheduler_defaults.get(name)
    return value


def build_engine(cfg: SimConfig, perf: PerfModel | None = None) -> Engine:
    """A simulated replica: policy + scheduler config + KV cache sized by the perf model."""
    perf = perf or build_perf(cfg)
    policy = make_policy(cfg.policy, **cfg.policy_options)
    max_len = cfg.max_model_len or getattr(perf, "max_model_len", None) or 131072
    sched_cfg = SchedulerConfig(block_size=cfg.block_size, max_model_len=max_len)
    sched_cfg = sched_cfg.with_overrides(dict(policy.scheduler_defaults))
    user = {
        "max_num_seqs": cfg.max_num_seqs,
        "max_num_batched_tokens": cfg.max_num_batched_tokens,
        "enable_chunked_prefill": cfg.enable_chunked_prefill,
        "enable_prefix_caching": cfg.enable_prefix_caching,
        "preemption_mode": cfg.preemption_mode,
        "kv_reservation": cfg.kv_reservation,
        "long_prefill_token_threshold": cfg.long_prefill_token_threshold,
    }
    sched_cfg = sched_cfg.with_overrides(user)
    if not sched_cfg.enable_chunked_prefill and cfg.max_num_batched_tokens is None:
        # As vLLM: without chunking the budget must hold the longest prompt.
        sched_cfg.max_num_batched_tokens = max(sched_cfg.max_num_batched_tokens, max_len)
    blocks = cfg.num_gpu_blocks or perf.kv_capacity_blocks(cfg.block_size)
    if blocks < 1:
        raise ConfigError(f"no KV cache blocks fit for {cfg.model} on {cfg.gpu} x{cfg.tp}")
    sched_cfg.max_model_len = _fit_context(cfg, sched_cfg.max_model_len, blocks)
    kv_bytes = getattr(perf, "kv_bytes_per_token", 0) * cfg.block_size
    host_blocks = int(cfg.swap_space_gib * GIB // kv_bytes) if kv_bytes else blocks
    kv = KVCache(blocks, cfg.block_size, enable_prefix_caching=sched_cfg.enable_prefix_caching,
                 watermark=sched_cfg.watermark, num_host_blocks=host_blocks)
    scheduler = Scheduler(sched_cfg, policy, kv, num_layers=perf.num_layers)
    return Engine(scheduler, SimulatedExecutor(perf, swap_overlap=cfg.swap_overlap))


def _fit_context(cfg: SimConfig, max_len: int, blocks: int) -> int:
    """As vLLM: one request of the longest context must fit in the KV cache. An explicit
    ``max_model_len`` that does not fit is an error (vLLM refuses to start); the model's
    default is lowered to what fits, the way vLLM suggests."""
    capacity = blocks * cfg.block_size
    if max_len <= capacity:
        return max_len
    if cfg.max_model_len is not None:
        raise ConfigError(f"max_model_len {max_len} needs {max_len} tokens of KV cache but only "
                          f"{capacity} fit ({blocks} blocks of {cfg.block_size}); lower "
                          "--max-model-len or raise --gpu-memory-utilization / --num-gpu-blocks")
    return capacity


def run_simulation(cfg: SimConfig, workload: Workload,
                   progress: Callable[[float], None] | None = None,
                   keep_requests: bool = False) -> SimResult:
    if cfg.dp != 1:
        return run_lockstep(cfg, workload, progress, keep_requests)
    engine = build_engine(cfg)
    records, kept, on_end = _collector(keep_requests)

    loop = SimLoop(engine, workload, fast_forward=cfg.fast_forward, on_request_end=on_end)
    loop.run(progress)
    _check_conservation(engine)
    records.sort(key=lambda r: r.id)
    itls = itl_sample(engine.scheduler)
    summary = summarize(records, itls, cfg.goodput or None)
    st = loop.stats
    summary["steps"] = engine.steps
    summary["kv_blocks_total"] = engine.kv.num_blocks
    summary["max_model_len"] = engine.scheduler.cfg.max_model_len
    summary["kv_peak_used_blocks"] = engine.kv.stats.peak_used
    summary["kv_mean_utilization"] = (st.kv_used_step_sum / st.kv_steps / engine.kv.num_blocks
                                      if st.kv_steps else 0.0)
    summary["policy"] = cfg.policy
    if any(r.program >= 0 for r in records):
        from sluice.metrics.programs import program_summary

        summary.update(program_summary(
            records, engine.kv.stats, block_size=cfg.block_size,
            pin_samples=st.pin_samples, total_blocks=engine.kv.num_blocks,
            retention=getattr(engine.policy, "retention", None)))
    result = SimResult(cfg, records, summary, itls, st.kv_samples,
                       {"steps_planned": st.steps_planned,
                        "fast_forward_runs": st.fast_forward_runs,
                        "fast_forward_steps": st.fast_forward_steps,
                        "interruptions": st.interruptions})
    if keep_requests:
        result.requests = kept  # type: ignore[attr-defined]
    return result


def _collector(keep_requests: bool):
    """A record per ended request (and the request itself when asked), via the loops'
    ``on_request_end`` callback."""
    records: list[RequestRecord] = []
    kept: list[Request] = []

    def on_end(req: Request) -> None:
        records.append(RequestRecord.of(req))
        if keep_requests:
            kept.append(req)

    return records, kept, on_end


def run_lockstep(cfg: SimConfig, workload: Workload,
                 progress: Callable[[float], None] | None = None,
                 keep_requests: bool = False) -> SimResult:
    """``cfg.dp`` data-parallel ranks of an MoE model in lock step (``sim.lockstep``); each rank
    is a replica built from ``cfg`` with its own KV cache, sharing one perf model."""
    from sluice.sim.lockstep import BALANCERS, LockstepLoop

    if cfg.dp < 1:
        raise ConfigError(f"--dp must be >= 1, got {cfg.dp}")
    if cfg.dp_balancer not in BALANCERS:
        raise ConfigError(f"unknown DP balancer {cfg.dp_balancer!r}; valid: {sorted(BALANCERS)}")
    perf = build_perf(cfg)
    arch = getattr(perf, "arch", None)
    if arch is not None and not arch.is_moe:
        raise ConfigError(f"--dp {cfg.dp}: {cfg.model} is not a MoE model; vLLM runs the DP "
                          "ranks of a dense model independently (no lock step), which is N "
                          "separate replicas")
    engines = [build_engine(cfg, perf) for _ in range(cfg.dp)]
    records, kept, on_end = _collector(keep_requests)

    loop = LockstepLoop(engines, workload, balancer=BALANCERS[cfg.dp_balancer](cfg.dp),
                        on_request_end=on_end)
    loop.run(progress)
    for engine in engines:
        _check_conservation(engine)
    records.sort(key=lambda r: r.id)
    itls = merged([itl_sample(e.scheduler) for e in engines])
    summary = summarize(records, itls, cfg.goodput or None)
    st = loop.stats
    blocks = sum(e.kv.num_blocks for e in engines)
    summary["steps"] = st.steps
    summary["kv_blocks_total"] = blocks
    summary["max_model_len"] = engines[0].scheduler.cfg.max_model_len
    summary["kv_peak_used_blocks"] = sum(e.kv.stats.peak_used for e in engines)
    summary["kv_mean_utilization"] = (st.kv_used_step_sum / st.steps / blocks if st.steps else 0.0)
    summary["policy"] = cfg.policy
    summary["dp"] = {"ranks": cfg.dp, "model": "lockstep", "balancer": cfg.dp_balancer,
                     "expert_parallel": cfg.expert_parallel,
                     "requests_per_rank": list(st.dispatched),
                     "steps_per_rank": list(st.rank_steps), "dummy_steps": list(st.dummy_steps),
                     "wait_s": [round(w, 6) for w in st.wait_s]}
    result = SimResult(cfg, records, summary, itls, st.kv_samples,
                       {"steps_planned": sum(st.rank_steps), "fast_forward_runs": 0,
                        "fast_forward_steps": 0, "interruptions": 0})
    if keep_requests:
        result.requests = kept  # type: ignore[attr-defined]
    return result


def _check_conservation(engine: Engine) -> None:
    """A finished run holds no KV but pins and cached blocks; anything else is a leak."""
    sched = engine.scheduler
    if sched.running or sched.waiting:
        raise RuntimeError(f"simulation ended with {len(sched.running)} running and "
                           f"{len(sched.waiting)} waiting requests")
    engine.kv.check([])
