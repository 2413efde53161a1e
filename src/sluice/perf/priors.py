"""What a GPU without measurements (or an operator class a GPU has no rows for) gets: the
coefficients of donor GPUs, chosen group by group by one rule.

One function, :func:`prior_for`, serves three callers, so that what the validation scores is
what the simulator runs:

* ``fit.fit_all`` fills the operator classes a measured GPU has no rows for;
* ``validate`` builds the leave-one-GPU-out prior of each measured GPU (the "unseen GPU" line);
* ``fit.run_fit`` writes the coefficients of every unmeasured GPU of ``hardware.GPUS`` into
  ``coeffs.json`` (``priors``), and ``fitted.fitted_coeffs`` computes the same for a GPU spec
  the file does not name.

The rule, per coefficient group (``GROUPS``): donors are the measured GPUs with rows for that
group (the FA2-only decode groups are measured on FA2 GPUs only), for attention only those
running the same flash-attention generation when any does (``same_kernel``); among them a GPU
of the same die run the same way (``prior_key``), else the family median (two or more), else
the median of all donors; all-reduce only from GPUs of the same interconnect (NVLink / PCIe).
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

import numpy as np

from sluice.perf.hardware import GPUSpec
from sluice.perf.roofline import Coeffs

GROUPS: dict[str, tuple[str, ...]] = {
    "gemm": ("gemm_eff", "gemm_mem_eff", "gemm_launch", "gemm_k0"),
    "moe": ("moe_eff", "moe_mem_eff", "moe_launch"),
    "attn": ("dattn_mem_eff", "dattn_seq", "dattn_launch", "dattn_qhead"),
    # prefill: FA2's split kernel and FA3 are different kernels (``GPUSpec.flash_attn``),
    # so donors run the same generation where any measured GPU does (``same_kernel``)
    "prefill": ("pattn_eff", "pattn_seq", "pattn_cta", "pattn_launch", "pattn_crit_eff",
                "pattn_score", "pattn_tail"),
    # FA2-only decode structure (``GPUSpec.flash_attn``): the GQA swap copies, and MHA
    # decode streaming a sequence per SM; only FA2 GPUs with such rows are donors
    "fa2_swap": ("dattn_swap",),
    "mha_decode": ("dattn_mha_stream",),
    # the mixed-batch penalty is a property of vLLM's varlen kernel, not of one chip:
    # GPUs without mixed-batch measurements take it from those with them
    "mixed": ("mix_cta", "mix_sm_eff", "mix_bw_eff", "mix_empty", "mix_dec_factor", "mix_dseq",
              "mix_l2_exp"),
    "allreduce": ("ar_latency", "ar_eff"),
    "elementwise": ("elementwise_eff", "elementwise_launch", "elementwise_l2"),
    # benchmark-only L2 read efficiencies (of each GPU's own ``l2_bw``): from the GPUs with
    # warm-L2 benchmark rows
    "l2": ("gemm_l2_eff", "dattn_l2_eff"),
}
# groups whose donors must run the same flash-attention generation when any does
KERNEL_GROUPS = frozenset({"prefill"})


def prior_from(fitted: dict[str, Coeffs], start: Coeffs) -> Coeffs:
    """Median of fitted GPUs' coefficients (host overheads and scale stay ``start``'s)."""
    if not fitted:
        return start
    kw: dict[str, Any] = {}
    for f in fields(Coeffs):
        vals = [getattr(c, f.name) for c in fitted.values()]
        if isinstance(vals[0], tuple):
            kw[f.name] = tuple(float(x) for x in np.median(np.array(vals), axis=0))
        else:
            kw[f.name] = float(np.median(vals))
    for f in ("step_overhead", "seq_overhead", "scale"):
        kw[f] = getattr(start, f)
    return Coeffs(**kw)


def same_kernel(op: str, g: GPUSpec, donors: dict[str, Coeffs], specs: dict[str, GPUSpec]
                ) -> dict[str, Coeffs]:
    """Donors of coefficient group ``op`` for ``g``: for prefill attention only those running
    the same flash-attention generation, when there are any (FA3's efficiency curve, block
    start-up and softmax costs describe another kernel than FA2's); else all of them. All-reduce
    only from GPUs of the same interconnect, with no fallback: without one the group keeps the
    built-in guess."""
    if op == "allreduce":  # NVLink says nothing about PCIe (PCIe rings scale far worse): no fallback
        return {d: c for d, c in donors.items() if specs[d].nvlink == g.nvlink}
    if op not in KERNEL_GROUPS:
        return donors
    same = {d: c for d, c in donors.items() if specs[d].flash_attn == g.flash_attn}
    return same or donors


def _die_key(g: GPUSpec) -> str:
    """``die:<die>@<BF16 peak per SM>``: a prior key that says which silicon, run which way."""
    return f"die:{g.die}@{g.flops_bf16 / g.sms:.4g}"


def priors(fitted: dict[str, Coeffs], start: Coeffs, specs: dict[str, GPUSpec]
           ) -> dict[str, Coeffs]:
    """Median coefficients per die (``die:GH100@...``, one measured GPU is enough: a product of
    the same silicon differs only in the spec numbers), per architecture family with at least
    two measured GPUs (one GPU is not a family median), per interconnect (nvlink / pcie) and
    overall (``default``)."""
    out = {"default": prior_from(fitted, start)}
    for fam in sorted({specs[g].arch for g in fitted}):
        members = {g: c for g, c in fitted.items() if specs[g].arch == fam}
        if len(members) >= 2:
            out[fam] = prior_from(members, start)
    for key in sorted({_die_key(specs[g]) for g in fitted if specs[g].die}):
        out[key] = prior_from({g: c for g, c in fitted.items() if _die_key(specs[g]) == key}, start)
    for link, flag in (("nvlink", True), ("pcie", False)):
        members = {g: c for g, c in fitted.items() if specs[g].nvlink == flag}
        if members:
            out[link] = prior_from(members, start)
    return out


def prior_key(g: GPUSpec, pri: dict[str, Any], op: str = "") -> str:
    """Which prior an unmeasured GPU (or operator class) takes: all-reduce by interconnect;
    otherwise a measured GPU of the same die whose tensor cores run the same way (BF16 peak
    per SM within 25%: clock bins differ by less; GeForce AD102 runs FP32-accumulate at half
    rate, 165 vs 362 TFLOPS for the L40S on nearly as many SMs, so the RTX 4090 is no donor
    for the L40S), else its family's median, else all GPUs'."""
    if op == "allreduce":
        key = "nvlink" if g.nvlink else "pcie"
        return key if key in pri else "default"
    per_sm = g.flops_bf16 / max(g.sms, 1)
    for key in pri:
        if key.startswith(f"die:{g.die}@") and 0.8 <= per_sm / float(key.split("@")[1]) <= 1.25:
            return key
    return g.arch if g.arch in pri else "default"


def absolute_pcie_rates(g: GPUSpec, pool: dict[str, Coeffs], specs: dict[str, GPUSpec]
                        ) -> dict[str, Coeffs]:
    """Donors' all-reduce efficiencies re-expressed against ``g``'s link, so ``g`` inherits
    the donors' achieved bytes/s rather than their fraction of their own link (capped at
    ``g``'s link). Why: a PCIe all-reduce between GPUs without NVLink is bound by the root
    complex, by a bounce through host memory where peer-to-peer is off (GeForce and many
    workstation boards), and by NCCL's small-message protocols, not by the nominal PCIe
    generation; a Gen5 board is no faster in practice than the Gen4 boards measured."""
    return {d: replace(c, ar_eff=tuple(min(1.0, e * specs[d].link_bw / g.link_bw)
                                       for e in c.ar_eff))
            for d, c in pool.items()}


def prior_for(g: GPUSpec, base: Coeffs, donors: dict[str, Coeffs], has: dict[str, set[str]],
              start: Coeffs, specs: dict[str, GPUSpec], keep: set[str] | frozenset = frozenset()
              ) -> tuple[Coeffs, dict[str, str]]:
    """``base`` with every coefficient group not in ``keep`` taken from the donors' prior for
    ``g`` (``donors``: measured GPUs' coefficients, ``has``: the groups each has rows for; a
    donor named like ``g`` is skipped). Returns the coefficients and, per group replaced, the
    prior key it came from. Groups no donor measured keep ``base``'s values."""
    out, keys = base, {}
    for op, names in GROUPS.items():
        if op in keep:
            continue
        pool = {d: c for d, c in donors.items() if op in has.get(d, ()) and d != g.name}
        pool = same_kernel(op, g, pool, specs)
        if not pool:
            continue
        if op == "allreduce" and not g.nvlink:
            pool = absolute_pcie_rates(g, pool, specs)
        pri = priors(pool, start, specs)
        key = prior_key(g, pri, op)
        src = pri[key]
        out = replace(out, **{n: getattr(src, n) for n in names})
        keys[op] = key
    return out, keys
