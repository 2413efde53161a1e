"""KV capacity as vLLM computes it, against block counts recorded by real vLLM runs."""

from __future__ import annotations

import json

import pytest

from sluice.perf.fitted import coeffs_path
from sluice.perf.registry import build_perf_model

REF = json.loads((coeffs_path().parent / "kv_reference.json").read_text())["runs"]


@pytest.mark.parametrize("run", REF, ids=lambda r: f"{r['model']}-{r['gpu']}-tp{r['tp']}-"
                                                   f"{r['max_num_batched_tokens']}")
def test_kv_blocks_within_5_percent_of_vllm(run) -> None:
    pm = build_perf_model(run["model"], run["gpu"], tp=run["tp"], max_num_seqs=run["max_num_seqs"],
                          max_num_batched_tokens=run["max_num_batched_tokens"])
    got = pm.kv_capacity_blocks(16)
    assert abs(got / run["total_kv_blocks"] - 1) < 0.05


def test_kv_scales_with_block_size_and_utilization() -> None:
    pm = build_perf_model("llama-3.1-8b", "h100")
    assert abs(pm.kv_capacity_blocks(32) * 2 - pm.kv_capacity_blocks(16)) <= 2
    low = build_perf_model("llama-3.1-8b", "h100", gpu_memory_utilization=0.5)
    assert low.kv_capacity_blocks(16) < pm.kv_capacity_blocks(16)


def test_kv_bytes_per_token_from_config() -> None:
    # Llama-3.1-8B: 32 layers x 8 KV heads x 128 dims x (K, V) x 2 bytes
    assert build_perf_model("llama-3.1-8b", "h100").kv_bytes_per_token == 32 * 8 * 128 * 2 * 2


def test_expert_parallel_holds_fewer_experts_per_gpu() -> None:
    one = build_perf_model("qwen3-30b-a3b", "rtx-pro-6000")
    two = build_perf_model("qwen3-30b-a3b", "rtx-pro-6000", ep=2)
    assert two.kv_capacity_blocks(16) > one.kv_capacity_blocks(16)
