"""Build a PerfModel by name: the one entry point the simulator uses.

``kind`` picks the numbers (``roofline`` = peaks, ``fitted`` = committed efficiencies,
``calibrated:PATH`` = fitted plus a deployment calibration written by ``sluice perf
calibrate``); the cost structure is the same for all (roofline.py).
"""

from __future__ import annotations

from dataclasses import replace

from sluice.errors import ConfigError, unknown_name
from sluice.perf import hardware
from sluice.perf import models as _models
from sluice.perf.base import PerfModel
from sluice.perf.fitted import fitted_coeffs
from sluice.perf.roofline import Coeffs, StepCostModel

KINDS = ("fitted", "roofline", "calibrated:PATH")


def list_models() -> list[str]:
    return _models.list_models()


def list_gpus() -> list[str]:
    return sorted(hardware.GPUS)


def _check_fits(arch: _models.ModelArch, gpu: hardware.GPUSpec, tp: int, util: float,
                mnbt: int, max_num_seqs: int, ep: int) -> None:
    need = _models.weight_bytes_per_gpu(arch, tp, ep)
    have = gpu.mem_bytes * util
    free = _models.kv_cache_bytes(arch, gpu.mem_bytes, tp, util, mnbt, max_num_seqs, ep)
    if free <= 0:
        gib = 1024**3
        reserve = need + (have - need - free)
        raise ConfigError(
            f"model {arch.name} does not fit on {gpu.name} with tp={tp}: needs "
            f"{need / gib:.1f} GiB of weights per GPU (+{(reserve - need) / gib:.1f} GiB activation/"
            f"runtime reserve) but only {have / gib:.1f} GiB is usable "
            f"({gpu.mem_bytes / gib:.1f} GiB x gpu_memory_utilization {util}); "
            f"try a larger --tp or a bigger GPU")


def _coeffs(kind: str, gpu: hardware.GPUSpec, calibration: str | None) -> Coeffs:
    if kind == "roofline":
        if calibration:
            raise ConfigError("a calibration applies to the fitted model, not kind='roofline'")
        return Coeffs()
    if kind.startswith("calibrated:"):
        calibration = kind.split(":", 1)[1]
        kind = "fitted"
    if kind != "fitted":
        raise unknown_name("perf model kind", kind, list(KINDS))
    base, _src = fitted_coeffs(gpu)
    if calibration:
        from sluice.perf.calibrate import load_calibration

        return load_calibration(calibration, base)
    return base


def build_perf_model(model: str, gpu: str, tp: int = 1, kind: str = "fitted",
                     gpu_memory_utilization: float = 0.9, max_model_len: int | None = None, *,
                     calibration: str | None = None, max_num_batched_tokens: int | None = None,
                     max_num_seqs: int | None = None, ep: int = 1) -> PerfModel:
    """PerfModel for ``model`` (shipped id or config path) on ``tp`` x ``gpu``.

    Raises ConfigError for unknown names, bad numbers, or a model that does not fit.
    ``max_num_batched_tokens``/``max_num_seqs`` only size the activation reserve (vLLM's
    profile run); defaults are vLLM's online-serving defaults. ``ep`` > 1 models one rank of
    vLLM data parallel + expert parallel over ``ep`` ranks (MoE models only).
    """
    spec = hardware.get_gpu(gpu)
    arch = _models.load_arch(model)
    if not isinstance(tp, int) or tp < 1:
        raise ConfigError(f"tp must be a positive integer, got {tp!r}")
    if not 0.0 < gpu_memory_utilization <= 1.0:
        raise ConfigError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    if arch.num_kv_heads % tp and tp % arch.num_kv_heads:
        raise ConfigError(f"tp={tp} does not divide {arch.name}'s {arch.num_kv_heads} KV heads")
    if arch.num_heads % tp:
        raise ConfigError(f"tp={tp} does not divide {arch.name}'s {arch.num_heads} attention heads")
    if not isinstance(ep, int) or ep < 1 or (ep > 1 and not arch.is_moe):
        raise ConfigError(f"ep must be 1, or > 1 for a MoE model; got ep={ep!r} for {arch.name}")
    if ep > 1 and arch.num_experts % ep:
        raise ConfigError(f"ep={ep} does not divide {arch.name}'s {arch.num_experts} experts")
    mnbt = max_num_batched_tokens or 2048
    mns = max_num_seqs or 256
    _check_fits(arch, spec, tp, gpu_memory_utilization, mnbt, mns, ep)
    coeffs = _coeffs(kind, spec, calibration)
    if max_model_len is None:
        max_model_len = arch.max_position_embeddings
    elif max_model_len < 1:
        raise ConfigError(f"max_model_len must be positive, got {max_model_len}")

    def blocks(block_size: int) -> int:
        return _models.kv_blocks(arch, spec.mem_bytes, tp, gpu_memory_utilization, block_size,
                                 mnbt, mns, ep)

    tag = kind if not calibration else f"calibrated:{calibration}"
    ep_tag = f"ep{ep}" if ep > 1 else ""
    return StepCostModel(arch, spec, tp, coeffs, name=f"{arch.name}@{spec.name}x{tp}{ep_tag}/{tag}",
                         max_model_len=max_model_len, kv_blocks_fn=blocks, ep=ep)


def with_coeffs(model: StepCostModel, **changes: float) -> StepCostModel:
    """A copy of ``model`` with some coefficients changed (for fitting and tests)."""
    c = replace(model.c, **changes)
    return StepCostModel(model.arch, model.gpu, model.tp, c, name=model.name,
                         max_model_len=model.max_model_len, kv_blocks_fn=model._kv_blocks_fn,
                         ep=model.ep)
