"""TorchExecutor on the tiny model: greedy tokens equal transformers' reference forward through
every path the scheduler can take (mixed batches, chunked prefill, prefix-cache hits, swap,
recompute, interrupted and resumed prefill)."""

from __future__ import annotations

import json
import threading

import pytest

import torch  # noqa: F401 - required, never skipped
import transformers  # noqa: F401 - required, never skipped

from test_torch_driver import (BlockPool, InterruptAt, apply, generate, hf_greedy, make_req,
                               next_chunk, plan_of)

from sluice.core.plan import Chunk
from sluice.executors.torch.executor import TorchExecutor
from sluice.executors.torch.prepare import prepare

BS = 4  # small blocks: every prompt spans several, block boundaries get exercised
N_BLOCKS = 96
PROMPTS = [
    [5, 17, 99, 3, 250, 41, 77, 8, 16, 200, 31, 64, 12],
    [100, 101, 102],
    [9] * 2 + list(range(40, 71)),
    [220],
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return prepare("tiny", tmp_path_factory.mktemp("tiny"))


@pytest.fixture()
def ex(tiny_dir):
    return TorchExecutor(tiny_dir, num_gpu_blocks=N_BLOCKS, block_size=BS, num_host_blocks=32)


def reference(tiny_dir, ex, prompt, n):
    return hf_greedy(tiny_dir, prompt, n, set(ex.eos_token_ids))


def expect(tiny_dir, ex, prompts, outputs, n):
    for i, p in enumerate(prompts):
        assert outputs[i] == reference(tiny_dir, ex, p, n), f"request {i}"


@pytest.mark.parametrize("chunk_size", [10_000, 5, 1])
def test_mixed_batch_matches_hf(tiny_dir, ex, chunk_size):
    """Every request in every step: prefill chunks of several requests and decode tokens of
    others share one forward; chunk_size 5 and 1 split prompts into many chunks."""
    reqs = [make_req(i, p, max_tokens=12) for i, p in enumerate(PROMPTS)]
    outs = generate(ex, reqs, BlockPool(N_BLOCKS, BS), chunk_size=chunk_size)
    expect(tiny_dir, ex, PROMPTS, outs, 12)


def test_prefix_cache_hit_skips_compute(tiny_dir, ex):
    """B shares A's first two full blocks; B starts at position 8 reading A's KV."""
    pool = BlockPool(N_BLOCKS, BS)
    a = make_req(0, PROMPTS[0], max_tokens=6)
    generate(ex, [a], pool)
    b_prompt = PROMPTS[0][:8] + [7, 7, 150]
    b = make_req(1, b_prompt, max_tokens=8)
    b.blocks = a.blocks[:2]
    b.num_computed = 8
    outs = generate(ex, [b], pool)
    assert outs[1] == reference(tiny_dir, ex, b_prompt, 8)


def test_swap_out_in_with_block_reuse(tiny_dir, ex):
    pool = BlockPool(N_BLOCKS, BS)
    a, b = make_req(0, PROMPTS[0], 14), make_req(1, PROMPTS[2], 14)
    outs: dict[int, list[int]] = {0: [], 1: []}
    for _ in range(4):
        chunks = [next_chunk(r, pool, 100) for r in (a, b)]
        apply(ex.execute(plan_of(chunks, ex.num_layers)), chunks, outs)
    # Swap A out; its block ids go straight to a new request C in the same plan.
    swapped = list(a.blocks)
    pool.release(a.blocks)  # freed ids are handed out next
    a.blocks = []
    c = make_req(2, PROMPTS[2][::-1], 6)
    outs[2] = []
    chunks = [next_chunk(r, pool, 100) for r in (b, c)]
    assert set(c.blocks) & set(swapped)
    plan = plan_of(chunks, ex.num_layers, swap_out=[(a, swapped)])
    apply(ex.execute(plan), chunks, outs)
    for _ in range(3):
        chunks = [next_chunk(r, pool, 100) for r in (b, c)]
        apply(ex.execute(plan_of(chunks, ex.num_layers)), chunks, outs)
    # Swap A back into different blocks and decode in the same step.
    new_ids = [pool.free.pop() for _ in swapped]
    a.blocks = list(new_ids)
    chunks = [next_chunk(r, pool, 100) for r in (a, b)]
    apply(ex.execute(plan_of(chunks, ex.num_layers, swap_in=[(a, new_ids)])), chunks, outs)
    while len(outs[0]) < 14:
        chunks = [next_chunk(a, pool, 100)]
        apply(ex.execute(plan_of(chunks, ex.num_layers)), chunks, outs)
    assert outs[0] == reference(tiny_dir, ex, PROMPTS[0], 14)
    assert outs[2] == reference(tiny_dir, ex, PROMPTS[2][::-1], 4)[:len(outs[2])]
    assert not ex.kv.is_swapped(0)


def test_recompute_after_preemption(tiny_dir, ex):
    pool = BlockPool(N_BLOCKS, BS)
    a = make_req(0, PROMPTS[2], 12)
    outs: dict[int, list[int]] = {0: []}
    for _ in range(5):
        chunks = [next_chunk(a, pool, 100)]
        apply(ex.execute(plan_of(chunks, ex.num_layers)), chunks, outs)
    pool.release(a.blocks)  # recompute preemption: KV dropped
    a.blocks, a.num_computed = [], 0
    while len(outs[0]) < 12:  # prompt + generated tokens recomputed in chunks of 7
        chunks = [next_chunk(a, pool, 7)]
        apply(ex.execute(plan_of(chunks, ex.num_layers)), chunks, outs)
    assert outs[0] == reference(tiny_dir, ex, PROMPTS[2], 12)


def test_interrupted_prefill_resumes(tiny_dir, ex):
    """A prefill chunk is cut after layer 1, then after layer 3 while resumed (from 1), then
    finishes from layer 3; a decode request in the same steps is recomputed each time."""
    pool = BlockPool(N_BLOCKS, BS)
    d = make_req(1, PROMPTS[1], 8)
    outs: dict[int, list[int]] = {0: [], 1: []}
    chunks = [next_chunk(d, pool, 100)]
    apply(ex.execute(plan_of(chunks, ex.num_layers)), chunks, outs)
    a = make_req(0, PROMPTS[2], 6)
    pool.ensure(a, a.prompt_len)
    skip = 0
    for k, expected in ((1, 1), (3, 3)):  # boundaries checked: after layer 1, 2, 3
        ex.interrupt = InterruptAt(k)
        chunks = [Chunk(a, 0, a.prompt_len, True, skip), next_chunk(d, pool, 100)]
        res = ex.execute(plan_of(chunks, ex.num_layers, interruptible=True))
        assert res.layers_done == expected and not res.sampled
        skip = res.layers_done
    ex.interrupt = threading.Event()
    chunks = [Chunk(a, 0, a.prompt_len, True, skip), next_chunk(d, pool, 100)]
    apply(ex.execute(plan_of(chunks, ex.num_layers, interruptible=True)), chunks, outs)
    while len(outs[0]) < 6:
        chunks = [next_chunk(r, pool, 100) for r in (a, d)]
        apply(ex.execute(plan_of(chunks, ex.num_layers)), chunks, outs)
    assert outs[0] == reference(tiny_dir, ex, PROMPTS[2], 6)
    assert outs[1] == reference(tiny_dir, ex, PROMPTS[1], len(outs[1]))


def test_not_interruptible_runs_through(tiny_dir, ex):
    pool = BlockPool(N_BLOCKS, BS)
    a = make_req(0, PROMPTS[0], 4)
    ex.interrupt = InterruptAt(1)
    chunks = [next_chunk(a, pool, 100)]
    res = ex.execute(plan_of(chunks, ex.num_layers, interruptible=False))
    assert res.layers_done is None and res.sampled[0] == reference(tiny_dir, ex, PROMPTS[0], 1)


def test_bfloat16_runs_close_to_fp32(tiny_dir, ex):
    """bf16 weights and KV: not token-exact, but the first step's logits stay close."""
    import torch

    bf = TorchExecutor(tiny_dir, dtype="bfloat16", num_gpu_blocks=N_BLOCKS, block_size=BS)
    assert bf.kv.data.dtype == torch.bfloat16
    outs = []
    for e in (ex, bf):
        r = make_req(0, PROMPTS[0], 2, None)
        pool = BlockPool(N_BLOCKS, BS)
        chunk = next_chunk(r, pool, 100)
        batch_plan = plan_of([chunk], e.num_layers)
        e.execute(batch_plan)
        with torch.inference_mode():
            k, _ = e.kv.layer(e.num_layers - 1)
            outs.append(k[r.blocks[0]].float().clone())
    assert torch.allclose(outs[0], outs[1], atol=0.1 * outs[0].abs().max().item())


def test_step_log_lines(tiny_dir, tmp_path):
    log = tmp_path / "steps.jsonl"
    ex = TorchExecutor(tiny_dir, num_gpu_blocks=N_BLOCKS, block_size=BS, step_log=log)
    pool = BlockPool(N_BLOCKS, BS)
    r = make_req(0, PROMPTS[0], 3)
    outs: dict[int, list[int]] = {0: []}
    for _ in range(3):
        plan = plan_of([], ex.num_layers)
        plan.add(r, r.num_tokens - r.num_computed, r.num_computed < r.prompt_len)
        pool.ensure(r, r.num_tokens)
        chunks = plan.all_chunks()
        apply(ex.execute(plan), chunks, outs)
    ex.close()
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(rows) == 3
    assert rows[0]["prefill_tokens"] == len(PROMPTS[0]) and rows[0]["prefill_seqs"] == 1
    assert rows[1]["decode_seqs"] == 1 and rows[1]["decode_ctx"] == len(PROMPTS[0]) + 1
    assert all(x["duration_s"] > 0 for x in rows)


def test_bad_plans_are_rejected_clearly(ex):
    r = make_req(0, [1, 2, 3], 4)
    with pytest.raises(ValueError, match="blocks cannot hold"):
        ex.execute(plan_of([Chunk(r, 0, 3, True)], ex.num_layers))
    r.blocks = [N_BLOCKS + 5]
    with pytest.raises(ValueError, match="outside"):
        ex.execute(plan_of([Chunk(r, 0, 3, True)], ex.num_layers))
    r.blocks = [0]
    with pytest.raises(ValueError, match="outside the 3 tokens"):
        ex.execute(plan_of([Chunk(r, 2, 4, True)], ex.num_layers))
    bad = make_req(1, [1, 2, 10_000], 4)
    bad.blocks = [0]
    with pytest.raises(ValueError, match="token ids must be in"):
        ex.execute(plan_of([Chunk(bad, 0, 3, True)], ex.num_layers))
    with pytest.raises(ValueError, match="no KV of it on the host"):
        ex.execute(plan_of([], ex.num_layers, swap_in=[(r, [1])]))
