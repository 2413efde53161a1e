"""Fitted coefficients: roofline efficiencies measured on real kernels, committed as data.

Why efficiencies and not per-model tables: an efficiency (fraction of the GPU's peak FLOP/s or
bandwidth that a kernel reaches at a given size) transfers across models, because a model only
changes the GEMM shapes and head counts; so one fit per GPU prices every Llama/Qwen/Mistral/
Mixtral-style model with no profiling. ``sluice perf fit`` (fit.py) writes
``sluice/data/perf/coeffs.json``: one entry per measured GPU plus priors (the median of the
measured GPUs of one die, of one architecture family with two or more, or of all) used for GPUs
never measured (H200 takes H100's die, GH100; B200 the all-GPU median).
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from sluice.errors import ConfigError
from sluice.perf.hardware import GPUSpec
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
    """Coefficients for ``gpu`` and where they came from ("measured:<gpu>", "prior:die:<die>",
    "prior:<arch>", "prior:default")."""
    t = _table() if table is None else table
    gpus = t.get("gpus", {})
    if gpu.name in gpus:
        return coeffs_from_dict(gpus[gpu.name], f"coeffs.json gpus.{gpu.name}"), f"measured:{gpu.name}"
    priors = t.get("priors", {})
    # a measured GPU of the same die run the same way, else the family median, else all
    # GPUs' (the rule and its reasons: ``fit.prior_key``)
    per_sm = gpu.flops_bf16 / max(gpu.sms, 1)
    fam = next((k for k in priors if k.startswith(f"die:{gpu.die}@")
                and 0.8 <= per_sm / float(k.split("@")[1]) <= 1.25),
               gpu.arch if gpu.arch in priors else "default")
    if fam not in priors:
        return PRIOR, "prior:builtin"
    c = coeffs_from_dict(priors[fam], f"coeffs.json priors.{fam}")
    link = "nvlink" if gpu.nvlink else "pcie"
    if link in priors:  # all-reduce cost follows the interconnect, not the chip family
        lc = coeffs_from_dict(priors[link], f"coeffs.json priors.{link}")
        c = replace(c, ar_latency=lc.ar_latency, ar_eff=lc.ar_eff)
    return c, f"prior:{fam}"
