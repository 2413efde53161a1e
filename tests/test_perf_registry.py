"""PerfModel contract: names, errors, exact fast-forward, monotonicity, TP direction."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.core.plan import BatchStats
from sluice.errors import ConfigError
from sluice.perf.base import PerfModel, decode_run_by_steps
from sluice.perf.registry import build_perf_model, list_gpus, list_models

KINDS = ["fitted", "roofline"]
# model[@gpu] (default h100): FA2 GPUs cover the GQA swap copies (l40s) and MHA decode's
# per-batch slope (llama-2-7b on a100: query heads == KV heads, no split-KV)
MODELS = ["llama-3.1-8b", "qwen3-30b-a3b", "mixtral-8x7b", "smollm2-135m", "llama-3.1-8b@l40s",
          "llama-2-7b@a100-80g"]


@pytest.fixture(scope="module")
def perf_models() -> dict[tuple[str, str], PerfModel]:
    out = {}
    for kind in KINDS:
        for m in MODELS:
            name, _, gpu = m.partition("@")
            tp = 2 if name in ("qwen3-30b-a3b", "mixtral-8x7b") else 1
            out[(kind, m)] = build_perf_model(name, gpu or "h100", tp=tp, kind=kind)
    return out


def test_lists_cover_the_issue() -> None:
    for m in ["llama-2-7b", "llama-2-13b", "llama-2-70b", "llama-3.1-8b", "llama-3.1-70b",
              "codellama-34b", "mistral-7b", "mistral-nemo-12b", "qwen2.5-7b", "qwen2.5-14b",
              "qwen2.5-32b", "qwen2.5-72b", "qwen3-8b", "qwen3-14b", "qwen3-32b", "qwen3-30b-a3b",
              "mixtral-8x7b", "mixtral-8x22b", "yi-34b", "smollm2-135m"]:
        assert m in list_models()
    for g in ["a100-40g", "a100-80g", "h100", "h100-pcie", "h200", "b200", "l40s", "a40",
              "rtx-4090", "rtx-pro-6000", "cpu"]:
        assert g in list_gpus()


def test_protocol_and_attributes(perf_models) -> None:
    for pm in perf_models.values():
        assert isinstance(pm, PerfModel)
        assert pm.num_layers > 0 and pm.max_model_len > 0 and pm.kv_bytes_per_token > 0
        assert isinstance(pm.name, str)


def test_unknown_names_list_valid_ones() -> None:
    with pytest.raises(ConfigError, match="h100"):
        build_perf_model("llama-3.1-8b", "h1000")
    with pytest.raises(ConfigError, match="llama-3.1-8b"):
        build_perf_model("llama-9", "h100")
    with pytest.raises(ConfigError, match="kind"):
        build_perf_model("llama-3.1-8b", "h100", kind="magic")


def test_model_too_big_says_how_much_memory() -> None:
    with pytest.raises(ConfigError, match=r"GiB.*usable"):
        build_perf_model("llama-3.1-70b", "rtx-4090", tp=1)
    build_perf_model("llama-3.1-70b", "h100", tp=4)


def test_missing_config_field_is_named(tmp_path) -> None:
    (tmp_path / "config.json").write_text('{"hidden_size": 64, "num_attention_heads": 4}')
    with pytest.raises(ConfigError, match="num_hidden_layers.*config.json|config.json.*num_hidden_layers"):
        build_perf_model(str(tmp_path), "h100")


def test_max_model_len_from_config_or_given() -> None:
    assert build_perf_model("llama-2-7b", "h100").max_model_len == 4096
    assert build_perf_model("llama-2-7b", "h100", max_model_len=1000).max_model_len == 1000


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(KINDS), st.sampled_from(MODELS), st.integers(1, 512),
       st.integers(0, 2_000_000), st.integers(1, 40))
def test_decode_run_bit_identical_to_step_time(perf_models, kind, m, b, c0, k) -> None:
    pm = perf_models[(kind, m)]
    c = c0 + b  # every sequence has at least one token of context
    fast = pm.decode_run(b, c, k)
    slow = decode_run_by_steps(pm, b, c, k)
    assert fast.dtype == np.float64 and fast.shape == (k,)
    assert fast.tobytes() == slow.tobytes()
    base, fixed, slope = pm.decode_line(b)  # the scalar form fast-forward uses
    scalar = np.array([(slope * (c + i * b) + fixed) + base for i in range(k)])
    assert scalar.tobytes() == slow.tobytes()


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(KINDS), st.sampled_from(MODELS), st.integers(0, 4096), st.integers(0, 256),
       st.integers(0, 64), st.integers(0, 512), st.integers(1, 512))
def test_more_work_is_never_cheaper(perf_models, kind, m, p, d, ctx_per, extra_p, extra_d) -> None:
    pm = perf_models[(kind, m)]

    def stats(pt: int, ds: int) -> BatchStats:
        ps = 1 if pt else 0
        return BatchStats(prefill_tokens=pt, prefill_seqs=ps, prefill_attn=pt * (pt + 1) / 2,
                          decode_seqs=ds, decode_ctx=ds * (ctx_per + 1) * 16)

    base = pm.step_time(stats(p, d))
    assert pm.step_time(stats(p + extra_p, d)) >= base
    assert pm.step_time(stats(p, d + extra_d)) >= base
    more_ctx = stats(p, d)
    more_ctx.decode_ctx += extra_d
    assert pm.step_time(more_ctx) >= base


@pytest.mark.parametrize("kind", KINDS)
def test_tp_makes_big_steps_faster_and_more_memory(kind) -> None:
    one = build_perf_model("llama-3.1-8b", "h100", tp=1, kind=kind)
    two = build_perf_model("llama-3.1-8b", "h100", tp=2, kind=kind)
    prefill = BatchStats(prefill_tokens=2048, prefill_seqs=1, prefill_attn=2048 * 2049 / 2)
    decode = BatchStats(decode_seqs=64, decode_ctx=64 * 2000)
    for s in (prefill, decode):
        assert two.step_time(s) < one.step_time(s)
        assert two.step_time(s) > one.step_time(s) / 2.5  # communication is not free
    assert two.kv_capacity_blocks(16) > one.kv_capacity_blocks(16)


def test_every_shipped_pair_builds_or_says_memory() -> None:
    for m in list_models():
        for g in list_gpus():
            try:
                pm = build_perf_model(m, g, tp=1)
            except ConfigError as e:
                assert "does not fit" in str(e) or "tp=" in str(e)
            else:
                assert pm.step_time(BatchStats(decode_seqs=1, decode_ctx=100)) > 0


def test_qwen3_moe_tp2_h100_runs() -> None:
    pm = build_perf_model("qwen3-30b-a3b", "h100", tp=2)
    t = pm.step_time(BatchStats(prefill_tokens=512, prefill_seqs=2, prefill_attn=2 * 256 * 257 / 2,
                                decode_seqs=30, decode_ctx=30 * 800))
    assert 1e-3 < t < 1.0
    assert pm.kv_capacity_blocks(16) > 10_000


def test_swap_time_grows_with_blocks_and_runs() -> None:
    pm = build_perf_model("llama-3.1-8b", "h100")
    assert pm.swap_time(0, 0) == 0.0
    assert pm.swap_time(100, 1) < pm.swap_time(200, 1) < pm.swap_time(200, 50)


def test_decode_run_exact_with_calibration_scale() -> None:
    from sluice.perf.registry import with_coeffs

    pm = with_coeffs(build_perf_model("llama-3.1-8b", "l40s"), scale=1.37, step_overhead=3.3e-3,
                     seq_overhead=1.1e-5)
    rng = np.random.default_rng(0)
    for _ in range(50):
        b, k = int(rng.integers(1, 300)), int(rng.integers(1, 30))
        c = b + int(rng.integers(0, 10**6))
        assert pm.decode_run(b, c, k).tobytes() == decode_run_by_steps(pm, b, c, k).tobytes()


def test_expert_parallel_changes_moe_cost_not_dense() -> None:
    dense = build_perf_model("llama-3.1-8b", "h100")
    with pytest.raises(ConfigError, match="ep"):
        build_perf_model("llama-3.1-8b", "h100", ep=2)
    one = build_perf_model("qwen3-30b-a3b", "rtx-pro-6000")
    two = build_perf_model("qwen3-30b-a3b", "rtx-pro-6000", ep=2)
    s = BatchStats(decode_seqs=64, decode_ctx=64 * 500)
    assert two.step_time(s) < one.step_time(s)  # half the expert weights to read per rank
    assert dense.step_time(s) > 0
