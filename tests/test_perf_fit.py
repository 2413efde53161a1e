"""The fitting code prices rows with the same formulas the runtime uses, and the shipped
coefficients are sane (efficiencies in (0, 1.3], curves that keep operators monotone)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sluice.core.plan import BatchStats
from sluice.perf.fit import (MAX_STEP, Table, _monotone, load_tables, vec_allreduce, vec_attn,
                             vec_gemm, vec_moe)
from sluice.perf.fitted import coeffs_from_dict, coeffs_path, fitted_coeffs
from sluice.perf.hardware import GPUS, get_gpu
from sluice.perf.registry import build_perf_model
from sluice.errors import ConfigError


def _table(**cols) -> Table:
    n = len(next(iter(cols.values())))
    base = {"source": np.array(["t"] * n, dtype=object), "gpu": np.array(["h100"] * n, dtype=object),
            "model": np.array(["m"] * n, dtype=object), "time_s": np.ones(n)}
    base.update({k: np.asarray(v, dtype=np.float64) for k, v in cols.items()})
    return Table(base)


@pytest.fixture(scope="module")
def pm():
    return build_perf_model("llama-3.1-8b", "h100", tp=2)


def test_vectorised_gemm_and_moe_match_runtime(pm) -> None:
    g, c = pm.gpu, pm.c
    for m, n, k in [(1, 4096, 4096), (37, 14336, 4096), (4096, 128256, 4096), (20000, 6144, 4096)]:
        assert vec_gemm(g, c, np.array([m]), n, k)[0] == pytest.approx(pm.gemm_time(m, n, k), rel=1e-12)
    moe = build_perf_model("qwen3-30b-a3b", "h100", tp=2)
    a = moe.arch
    for tokens in (1, 7, 300, 4096):
        want = moe.moe_time(tokens)
        got = vec_moe(moe.gpu, moe.c, np.array([float(tokens)]), a.hidden, a.moe_intermediate / 2,
                      a.top_k, a.num_experts)[0]
        assert got == pytest.approx(want, rel=1e-12)


def test_vectorised_attention_matches_runtime(pm) -> None:
    a, L = pm.arch, pm.num_layers
    heads, kvh = a.num_heads // 2, a.num_kv_heads // 2
    for ps, n, ctx, ds, dctx in [(1, 512, 0, 0, 0), (2, 100, 300, 0, 0), (0, 0, 0, 64, 900),
                                 (1, 256, 1024, 32, 2000), (1, 16, 8192, 1, 16384),
                                 (1, 2048, 0, 128, 16), (1, 40, 0, 3, 100),
                                 # one wave of blocks (side by side); KV past L2 (no head reuse)
                                 (1, 16, 0, 1, 8000), (1, 64, 4096, 4, 3000),
                                 (1, 100, 0, 200, 4000)]:
        t = _table(p_seqs=[ps], p_new=[n], p_ctx=[ctx], d_seqs=[ds], d_ctx=[dctx], heads=[heads],
                   kv_heads=[kvh], head_dim=[a.head_dim])
        s = BatchStats(prefill_tokens=ps * n, prefill_seqs=ps,
                       prefill_attn=ps * (n * ctx + n * (n + 1) / 2), prefill_ctx=ps * ctx,
                       decode_seqs=ds, decode_ctx=ds * dctx)
        runtime = pm.prefill_attn_time(s) if ps else 0.0
        if ds and ps:  # one varlen kernel: decode rows priced as blocks per query head
            runtime += pm.mixed_decode_time(s, runtime)
        elif ds:
            runtime += pm.decode_fixed(ds) + pm._dec_slope * s.decode_ctx
        assert vec_attn(pm.gpu, pm.c, t)[0] * L == pytest.approx(runtime, rel=1e-9)


def test_vectorised_allreduce_matches_runtime(pm) -> None:
    tokens = 333.0
    got = vec_allreduce(pm.gpu, pm.c, np.array([2.0]), np.array([tokens * pm.arch.hidden * 2]))[0]
    assert got == pytest.approx(pm.allreduce_time(tokens), rel=1e-12)


def test_monotone_projection_bounds_growth() -> None:
    out = _monotone((0.01, 0.9, 0.2, 0.5, 0.5))
    for lo, hi in zip(out, out[1:]):
        assert hi <= lo * MAX_STEP + 1e-12


def test_shipped_coefficients_are_sane() -> None:
    doc = json.loads(coeffs_path().read_text())
    assert {"h100", "a100-80g", "l40s"} <= set(doc["gpus"])
    for name, d in {**doc["gpus"], **doc["priors"]}.items():
        c = coeffs_from_dict(d, name)
        for curve in (c.gemm_eff, c.moe_eff, c.pattn_eff):
            assert all(0 < e <= 1.3 for e in curve)
            assert all(b <= a * MAX_STEP + 1e-9 for a, b in zip(curve, curve[1:]))
        assert 0 < c.dattn_mem_eff <= 1.3 and 0 < c.gemm_mem_eff <= 1.3
        assert all(x >= 1.0 for x in c.mix_dec_factor)
        assert list(c.mix_dec_factor) == sorted(c.mix_dec_factor)


def test_unmeasured_gpu_gets_a_prior() -> None:
    _, src = fitted_coeffs(get_gpu("h200"))
    assert src.startswith("prior:")
    _, src = fitted_coeffs(get_gpu("h100"))
    assert src == "measured:h100"


def test_bad_coefficient_names_are_rejected() -> None:
    with pytest.raises(ConfigError, match="gemm_efff"):
        coeffs_from_dict({"gemm_efff": 1.0})


def test_measured_tables_load_and_cover_gpus() -> None:
    t = load_tables()
    assert len(t["gemm"]) > 1000 and len(t["attn"]) > 1000
    assert {"h100", "a100-80g", "l40s", "rtx-pro-6000"} <= set(t["gemm"]["gpu"])
    assert all(g in GPUS for g in set(t["attn"]["gpu"]))
    assert (t["attn"]["time_s"] > 0).all()


def test_vectorised_elementwise_matches_runtime(pm) -> None:
    from sluice.perf.fit import vec_elementwise

    for m in (pm, build_perf_model("qwen3-32b", "rtx-pro-6000", tp=2),
              build_perf_model("qwen3-30b-a3b", "h100", tp=1)):
        a = m.arch
        qkv = m._shapes.layer[0][0]
        inter = (a.shared_intermediate if a.is_moe else a.intermediate) / m.tp
        qk = (a.num_heads + a.num_kv_heads) // m.tp * a.head_dim if a.qk_norm else 0
        for tokens in (1.0, 300.0, 8192.0):  # L2-resident passes and cold ones
            t = _table(tokens=[tokens], hidden=[a.hidden], qkv=[qkv], inter=[inter], qk=[qk])
            assert vec_elementwise(m.gpu, m.c, t)[0] == pytest.approx(m.elementwise_time(tokens), rel=1e-12)


def test_qk_norm_is_read_from_the_config(tmp_path) -> None:
    """Qwen3 (dense and MoE) normalises q and k per head: two more passes over q and k."""
    from sluice.perf.models import arch_from_config, load_arch

    assert load_arch("qwen3-32b").qk_norm and load_arch("qwen3-30b-a3b").qk_norm
    assert not load_arch("llama-3.1-8b").qk_norm and not load_arch("qwen2.5-7b").qk_norm
    cfg = {"hidden_size": 1024, "num_attention_heads": 16, "num_key_value_heads": 8,
           "num_hidden_layers": 2, "vocab_size": 1000, "max_position_embeddings": 4096,
           "intermediate_size": 3072, "head_dim": 128}
    assert not arch_from_config(cfg, "x").qk_norm
    assert arch_from_config({**cfg, "model_type": "qwen3"}, "x").qk_norm
    assert arch_from_config({"model_type": "qwen3_vl", "text_config": {**cfg, "model_type": "qwen3"}},
                            "x").qk_norm
    qwen3 = build_perf_model("qwen3-32b", "rtx-pro-6000", tp=2)
    plain = build_perf_model(str(_write(tmp_path / "p", cfg)), "rtx-pro-6000")
    normed = build_perf_model(str(_write(tmp_path / "q", {**cfg, "model_type": "qwen3"})), "rtx-pro-6000")
    for tokens in (1.0, 512.0, 16384.0):
        assert normed.elementwise_time(tokens) > plain.elementwise_time(tokens)
    assert len(qwen3._ew_passes) == 5  # two norms, rotary, activation, q/k norm


def _write(d, cfg) -> object:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def test_fa2_decode_structure() -> None:
    """FA2 (A100/L40S/RTX) decode: grouped query heads are packed by transposing q and the
    output (two copies, batch >= 2 with >= 2 KV heads per GPU); MHA decode is not split over
    SMs, so a small batch streams each sequence's KV on one SM (a per-batch slope). FA3 (H100)
    has neither."""
    gqa = build_perf_model("llama-3.1-8b", "l40s", tp=1)  # 32 query heads, 8 KV heads
    assert gqa._dec_swap > 0 and gqa.c.dattn_swap > 0
    jump = gqa.decode_fixed(2) - gqa.decode_fixed(1)
    step = gqa.decode_fixed(3) - gqa.decode_fixed(2)
    assert jump > step + 0.5 * gqa.num_layers * gqa.c.dattn_swap
    assert build_perf_model("llama-3.1-8b", "h100", tp=1)._dec_swap == 0.0
    assert build_perf_model("llama-3.1-8b", "l40s", tp=8)._dec_swap == 0.0  # 1 KV head per GPU
    mha = build_perf_model("llama-2-7b", "a100-80g", tp=1)  # 32 heads = 32 KV heads
    assert mha.decode_slope(1) > 2 * mha.decode_slope(64)  # 32 blocks on 108 SMs vs DRAM bound
    assert mha.decode_slope(1000) == mha._dec_slope
    assert build_perf_model("llama-2-7b", "h100").decode_slope(1) == \
        build_perf_model("llama-2-7b", "h100").decode_slope(64)


def test_warm_l2_prices_benchmark_rows_only() -> None:
    """AIConfigurator re-runs a GEMM over 6 weight copies: copies that fit in L2 are read at the
    fitted L2 rate; rows of cold sources and the runtime (no ``copies``) stay at DRAM speed."""
    pm = build_perf_model("llama-3.1-8b", "l40s", tp=1)
    g, c = pm.gpu, pm.c
    # L40S (96 MB L2): small weights run above the DRAM roofline
    assert g.l2_bw * c.gemm_l2_eff > g.mem_bw * c.gemm_mem_eff
    m, n, k = np.array([4.0, 4.0]), np.array([1024.0, 8192.0]), np.array([4096.0, 8192.0])
    cold = vec_gemm(g, c, m, n, k)
    warm = vec_gemm(g, c, m, n, k, copies=np.array([6.0, 6.0]))
    assert warm[0] < cold[0]  # 6 x 8 MB fits in 96 MB
    assert warm[1] == cold[1]  # 6 x 128 MB does not
    assert vec_gemm(g, c, m, n, k, copies=np.zeros(2)).tolist() == cold.tolist()
    assert cold[0] == pytest.approx(pm.gemm_time(4.0, 1024, 4096), rel=1e-12)


def test_warm_l2_rates_are_never_read_by_the_runtime() -> None:
    """The warm-L2 read efficiencies (and the L2 bandwidth they multiply) price benchmark rows
    only: a StepCostModel with other values, or on a GPU spec with another ``l2_bw``, costs
    every step the same."""
    import inspect
    from dataclasses import replace

    from sluice.perf import roofline
    from sluice.perf.registry import with_coeffs
    from sluice.perf.roofline import StepCostModel

    src = inspect.getsource(StepCostModel)
    assert "l2_eff" not in src and "l2_bw" not in src
    base = build_perf_model("llama-3.1-8b", "l40s", tp=1)
    other = with_coeffs(base, gemm_l2_eff=0.9, dattn_l2_eff=0.05)
    fast = roofline.StepCostModel(base.arch, replace(base.gpu, l2_bw=1e15), base.tp, base.c,
                                  name=base.name, max_model_len=base.max_model_len,
                                  kv_blocks_fn=base._kv_blocks_fn, ep=base.ep)
    steps = [BatchStats(prefill_tokens=512, prefill_seqs=1, prefill_attn=512 * 513 / 2,
                        max_prefill_chunk=512),
             BatchStats(decode_seqs=32, decode_ctx=32 * 900),
             BatchStats(prefill_tokens=256, prefill_seqs=1, prefill_attn=256 * 257 / 2,
                        max_prefill_chunk=256, decode_seqs=8, decode_ctx=8 * 2000)]
    for s in steps:
        assert other.step_time(s) == base.step_time(s) == fast.step_time(s)
    assert other.decode_line(16) == base.decode_line(16) == fast.decode_line(16)


def test_unseen_gpu_warm_rate_scales_with_its_own_l2_bandwidth() -> None:
    """A GPU without warm rows takes the donors' median *efficiency* (``priors.prior_for``),
    and its warm read rate is that efficiency times its own spec L2 bandwidth; an unknown L2
    bandwidth (0) reads warm rows at the cold rate."""
    from dataclasses import replace

    from sluice.perf.fit import l2_factor
    from sluice.perf.fitted import PRIOR
    from sluice.perf.priors import prior_for
    from sluice.perf.roofline import Coeffs

    donors = {"a100-80g": replace(PRIOR, gemm_l2_eff=0.2, dattn_l2_eff=0.3),
              "h100": replace(PRIOR, gemm_l2_eff=0.4, dattn_l2_eff=0.5)}
    has = {d: {"l2"} for d in donors}
    g = replace(GPUS["l40s"], name="test-gpu", die="test")
    c, keys = prior_for(g, Coeffs(), donors, has, PRIOR, GPUS)
    assert keys["l2"] == "default"
    assert c.gemm_l2_eff == pytest.approx(0.3) and c.dattn_l2_eff == pytest.approx(0.4)
    m, n, k, six = np.array([4.0]), np.array([1024.0]), np.array([4096.0]), np.array([6.0])
    cold = g.mem_bw * c.gemm_mem_eff
    for bw in (4e12, 8e12):  # warm memory time = bytes / (l2_bw x eff), above the cold rate
        gg = replace(g, l2_bw=bw)
        assert l2_factor(gg, cold, c.gemm_l2_eff) == pytest.approx(cold / (bw * 0.3))
    t4, t8 = (vec_gemm(replace(g, l2_bw=bw), c, m, n, k, copies=six)[0] - c.gemm_launch
              for bw in (4e12, 8e12))
    assert t8 == pytest.approx(t4 / 2.0)  # memory-bound: twice the L2 bandwidth, half the time
    assert l2_factor(replace(g, l2_bw=0.0), cold, c.gemm_l2_eff) == 1.0
    assert l2_factor(replace(g, l2_bw=1e9), cold, c.gemm_l2_eff) == 1.0  # never below cold


def test_split_kv_mirror_matches_runtime() -> None:
    from sluice.perf.fit import mixed_splits
    from sluice.perf.roofline import split_kv

    for sms, seqs, heads, q, ctx in [(188, 2, 32, 16, 8192), (188, 5, 32, 16, 8192), (132, 1, 8, 2048, 100),
                                     (108, 3, 4, 1, 20), (142, 129, 64, 16, 50)]:
        want = split_kv(sms, seqs, heads, q, ctx)
        assert mixed_splits(sms, np.array([seqs]), np.array([heads]), np.array([q]),
                            np.array([ctx]))[0] == want
    assert split_kv(188, 2, 32, 16, 8192) > 1.0 and split_kv(188, 129, 32, 16, 8192) == 1.0


def test_unmeasured_gpu_takes_a_die_mate_run_the_same_way() -> None:
    from sluice.perf.fit import prior_key
    from sluice.perf.fitted import fitted_coeffs
    from sluice.perf.hardware import GPUS

    assert fitted_coeffs(GPUS["h200"])[1].startswith("prior:die:GH100@")
    assert fitted_coeffs(GPUS["h100-pcie"])[1].startswith("prior:die:GH100@")
    assert fitted_coeffs(GPUS["a100-40g"])[1].startswith("prior:die:GA100@")
    # GeForce AD102 (half-rate FP32 accumulate: half the BF16 peak per SM) is no donor for L40S
    rtx = GPUS["rtx-4090"]
    pri = {f"die:AD102@{rtx.flops_bf16 / rtx.sms:.4g}": None, "ada": None, "default": None}
    assert prior_key(GPUS["l40s"], pri) == "ada"
    assert prior_key(GPUS["l40s"], {"default": None}) == "default"
    assert prior_key(GPUS["h200"], {"nvlink": None, "default": None}, "allreduce") == "nvlink"


@pytest.mark.parametrize("gpu", ["h100", "l40s", "rtx-pro-6000"])
def test_prefill_block_waves_match_runtime_on_fa2_and_fa3(gpu) -> None:
    from sluice.perf.fit import prefill_block_count
    from sluice.perf.roofline import prefill_blocks

    # FA2 (split kernel): 64-row blocks per query head; FA3 packs a KV group into 128 rows
    assert prefill_blocks(2, 32, 8, 65) == 64 and prefill_blocks(3, 32, 8, 65) == 8 * 3
    pm = build_perf_model("llama-3.1-8b", gpu, tp=1)
    assert pm.c.pattn_cta > 0
    a, L = pm.arch, pm.num_layers
    for ps, n, ctx in [(1, 16, 0), (8, 65, 100), (64, 129, 0), (3, 2048, 4096)]:
        t = _table(p_seqs=[ps], p_new=[n], p_ctx=[ctx], d_seqs=[0], d_ctx=[0], heads=[a.num_heads],
                   kv_heads=[a.num_kv_heads], head_dim=[a.head_dim])
        s = BatchStats(prefill_tokens=ps * n, prefill_seqs=ps,
                       prefill_attn=ps * (n * ctx + n * (n + 1) / 2), prefill_ctx=ps * ctx)
        assert vec_attn(pm.gpu, pm.c, t)[0] * L == pytest.approx(pm.prefill_attn_time(s), rel=1e-9)
        want = prefill_blocks(pm.gpu.flash_attn, a.num_heads, a.num_kv_heads, n)
        assert prefill_block_count(pm.gpu.flash_attn, np.array([a.num_heads]), np.array([a.num_kv_heads]),
                                   np.array([n]))[0] == want


def test_runtime_prior_is_the_validation_prior_rule() -> None:
    """What an unmeasured GPU runs with (coeffs.json ``priors``, or computed for a spec the file
    does not name) is what ``sluice perf validate`` scores as an unseen GPU: one function,
    ``priors.prior_for``, over the measured GPUs' coefficients and the groups they have rows
    for, group by group (die, family, flash-attention generation, interconnect)."""
    from dataclasses import replace

    from sluice.perf.fitted import PRIOR, _table
    from sluice.perf.priors import prior_for
    from sluice.perf.validate import _fill

    doc = _table()
    donors = {g: coeffs_from_dict(d, g) for g, d in doc["gpus"].items()}
    has = {g: set(v) for g, v in doc["measured_groups"].items()}
    assert set(doc["priors"]) == set(GPUS) - set(donors)
    for name in doc["priors"]:
        want, _ = prior_for(GPUS[name], PRIOR, donors, has, PRIOR, GPUS)
        assert fitted_coeffs(GPUS[name])[0] == want
        assert coeffs_from_dict(doc["priors"][name], name) == want
    # the validation's leave-one-GPU-out prior of a measured GPU is the same computation
    for g in donors:
        assert _fill(donors, has, exclude=g)[g] == prior_for(GPUS[g], donors[g], donors, has, PRIOR,
                                                             GPUS)[0]
    # a spec the file does not name gets the rule computed at load time: an H200 by another
    # name takes its die-mate's (H100's) coefficients, prefill from FA3 donors
    twin = replace(GPUS["h200"], name="h200-nvl")
    c, src = fitted_coeffs(twin)
    assert src.startswith("prior:die:GH100@") and c.pattn_eff == donors["h100"].pattn_eff
    assert c == fitted_coeffs(GPUS["h200"])[0]
    # FA2-only decode groups come from FA2 donors; prefill of an FA2 GPU from FA2 donors only
    b200 = fitted_coeffs(GPUS["b200"])[0]
    assert b200.dattn_swap > 0 and b200.pattn_eff != donors["h100"].pattn_eff


@pytest.mark.parametrize("gpu", ["a100-80g", "l40s"])
def test_one_token_queries_run_fa2_decode_path(gpu) -> None:
    """A step of one-token prefills only: FA2 sees max_seqlen_q == 1 and runs its decode path
    (priced by the decode structure, capped at the prefill path's price); the vectorised mirror
    agrees, and a two-token chunk is never cheaper than a one-token one."""
    pm = build_perf_model("llama-3.1-8b", gpu, tp=1)
    a, L = pm.arch, pm.num_layers
    for ps, ctx in [(1, 0), (2, 0), (64, 0), (256, 0), (8, 3000)]:
        s = BatchStats(prefill_tokens=ps, prefill_seqs=ps, prefill_attn=ps * (ctx + 1.0),
                       prefill_ctx=ps * ctx)
        t = _table(p_seqs=[ps], p_new=[1], p_ctx=[ctx], d_seqs=[0], d_ctx=[0], heads=[a.num_heads],
                   kv_heads=[a.num_kv_heads], head_dim=[a.head_dim])
        got = pm.prefill_attn_time(s)
        assert vec_attn(pm.gpu, pm.c, t)[0] * L == pytest.approx(got, rel=1e-9)
        assert got <= pm._one_token_time(ps, ps * (ctx + 1.0)) * (1 + 1e-12)
        two = BatchStats(prefill_tokens=2 * ps, prefill_seqs=ps, prefill_attn=ps * (2 * ctx + 3.0),
                         prefill_ctx=ps * ctx)
        assert pm.step_time(two) >= pm.step_time(s)
    # many one-token sequences: far below the prefill path's block waves
    s = BatchStats(prefill_tokens=256, prefill_seqs=256, prefill_attn=256.0)
    blocks = 256 * a.num_heads / pm.gpu.sms * pm.c.pattn_cta * L
    assert pm.prefill_attn_time(s) < blocks


def test_pcie_gpu_inherits_the_donors_all_reduce_bytes_per_second() -> None:
    """A PCIe GPU without all-reduce rows takes the PCIe donors' achieved bandwidth, not their
    fraction of their own link: a link twice as fast keeps the donors' GB/s (half the
    efficiency), a slower link is capped at its own peak, and NVLink GPUs keep fractions."""
    from dataclasses import replace

    from sluice.perf.fitted import PRIOR
    from sluice.perf.priors import prior_for
    from sluice.perf.roofline import Coeffs

    donor = replace(GPUS["l40s"], name="pcie-donor")
    specs = {**GPUS, "pcie-donor": donor}
    donors = {"pcie-donor": replace(PRIOR, ar_eff=(0.6, 0.3, 0.2))}
    has = {"pcie-donor": {"allreduce"}}
    for scale, want in ((2.0, (0.3, 0.15, 0.1)), (0.5, (1.0, 0.6, 0.4))):
        g = replace(donor, name="test-gpu", link_bw=donor.link_bw * scale)
        c, keys = prior_for(g, Coeffs(), donors, has, PRIOR, specs)
        assert keys["allreduce"] == "pcie" and c.ar_eff == pytest.approx(want)
    nv_donor = replace(GPUS["h100"], name="nv-donor")
    specs["nv-donor"] = nv_donor
    g = replace(nv_donor, name="test-gpu", link_bw=nv_donor.link_bw * 2.0)
    c, _ = prior_for(g, Coeffs(), {"nv-donor": donors["pcie-donor"]}, {"nv-donor": {"allreduce"}},
                     PRIOR, specs)
    assert c.ar_eff == pytest.approx((0.6, 0.3, 0.2))
