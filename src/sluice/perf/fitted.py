"""Fitted coefficients: roofline efficiencies measured on real kernels, committed as data.

Why efficiencies and not per-model tables: an efficiency (fraction of the GPU's peak FLOP/s or
bandwidth that a kernel reaches at a given size) transfers across models, because a model only
changes the GEMM shapes and head counts; so one fit per GPU prices every Llama/Qwen/Mistral/
Mixtral-style model with no profiling. ``sluice perf fit`` (fit.py) writes
``sluice/data/perf/coeffs.json``: one entry per measured GPU plus the coefficients of each GPU
never measured, built group by group from donor GPUs (``perf/priors.py``: a measured GPU of the
same die, else the family median, else all; by flash-attention generation and interconnect
where that matters; H200 takes H100's die, GH100).
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from importlib import resources
from pathlib import Path
from typing import Any

from sluice.errors import ConfigError
from sluice.perf.hardware import GPUS, GPUSpec
from sluice.perf.roofline import Coeffs

# Used only when no coefficient file ships (before `sluice perf fit` ran): typical fractions of
# peak for vLLM kernels on data-centre GPUs, and vLLM v1 host overheads.
_GEMM_PRIOR = (0.02, 0.03, 0.05, 0.09, 0.16, 0.28, 0.42, 0.55, 0.64, 0.70, 0.72, 0.74, 0.74, 0.74,
               0.74, 0.74)
PRIOR = Coeffs(gemm_eff=_GEMM_PRIOR, gemm_mem_eff=0.8, gemm_launch=4e-6, moe_eff=_GEMM_PRIOR,
               moe_mem_eff=0.7, moe_launch=20e-6, pattn_eff=tuple(min(0.5, 0.05 * 1.4**i) for i in range(16)), pattn_seq=1e-6, pattn_launch=8e-6,
               dattn_mem_eff=0.6, dattn_seq=0.2e-6, dattn_launch=8e-6, ar_latency=(8e-6, 15e-6, 25e-6), ar_eff=(0.6, 0.5, 0.4),
               elementwise_eff=0.6, elementwise_launch=2.5e-6, step_overhead=2.0e-3, seq_overhead=8e-6)


def coeffs_path() -> Path:
    return Path(str(resources.files("sluice"))) / "data" / "perf" / "coeffs.json"


def coeffs_to_dict(c: Coeffs) -> dict[str, Any]:
    d = asdict(c)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def coeffs_from_dict(d: dict[str, Any], where: str = "coefficients") -> Coeffs:
    """Build Coeffs from JSON; unknown keys are an error (a typo must not pass silently)."""
    names = {f.name for f in fields(Coeffs)}
    bad = sorted(set(d) - names)
    if bad:
        raise ConfigError(f"{where}: unknown coefficient(s) {', '.join(bad)}")
    kw = {k: (tuple(float(x) for x in v) if isinstance(v, list) else float(v)) for k, v in d.items()}
    return Coeffs(**kw)


_loaded: dict[str, Any] | None = None


def _table() -> dict[str, Any]:
    global _loaded
    if _loaded is None:
        p = coeffs_path()
        _loaded = json.loads(p.read_text()) if p.is_file() else {}
    return _loaded


def fitted_coeffs(gpu: GPUSpec, table: dict[str, Any] | None = None) -> tuple[Coeffs, str]:
    """Coefficients for ``gpu`` and where they came from: "measured:<gpu>", or for a GPU
    without measurements "prior:<key>" (the prior its GEMMs came from: "die:GH100@...",
    "<arch>" or "default"). Unmeasured GPUs of ``hardware.GPUS`` read the priors ``sluice perf
    fit`` wrote; any other spec gets them computed here by the same rule
    (``priors.prior_for``, also what ``sluice perf validate`` scores as an unseen GPU)."""
    t = _table() if table is None else table
    gpus = t.get("gpus", {})
    if gpu.name in gpus:
        return coeffs_from_dict(gpus[gpu.name], f"coeffs.json gpus.{gpu.name}"), f"measured:{gpu.name}"
    pri = t.get("priors", {})
    if gpu.name in pri and GPUS.get(gpu.name) == gpu:
        keys = t.get("prior_sources", {}).get(gpu.name, {})
        return (coeffs_from_dict(pri[gpu.name], f"coeffs.json priors.{gpu.name}"),
                f"prior:{keys.get('gemm', 'builtin')}")
    if not gpus:
        return PRIOR, "prior:builtin"
    from sluice.perf.priors import prior_for

    donors = {g: coeffs_from_dict(d, f"coeffs.json gpus.{g}") for g, d in gpus.items()}
    has = {g: set(v) for g, v in t.get("measured_groups", {}).items()}
    specs = {**GPUS, gpu.name: gpu}
    c, keys = prior_for(gpu, PRIOR, {g: v for g, v in donors.items() if g in GPUS}, has, PRIOR, specs)
    return c, f"prior:{keys.get('gemm', 'builtin')}"
