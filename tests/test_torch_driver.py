"""Test-only driver for TorchExecutor: a trivial block allocator and the scheduler's
bookkeeping (num_computed, appending sampled tokens), so executor tests need no scheduler.

Holds no tests itself; the other test_torch_* modules import it.
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from sluice.core.content import Content
from sluice.core.plan import Chunk, StepPlan, StepResult
from sluice.core.request import Request


class BlockPool:
    """Hands out free block ids; no prefix cache (tests share blocks explicitly)."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.block_size = block_size
        self.free = list(range(num_blocks - 1, -1, -1))

    def ensure(self, req: Request, n_tokens: int) -> None:
        """Grow ``req.blocks`` to hold ``n_tokens`` tokens."""
        need = -(-n_tokens // self.block_size)
        while len(req.blocks) < need:
            req.blocks.append(self.free.pop())

    def release(self, blocks: list[int]) -> None:
        self.free.extend(reversed(blocks))


def make_req(rid: int, tokens: list[int], max_tokens: int = 16, sampling=None) -> Request:
    return Request(id=rid, arrival=0.0, content=Content(tokens=tokens), max_tokens=max_tokens,
                   sampling=sampling)


def plan_of(chunks: list[Chunk], num_layers: int, **kw) -> StepPlan:
    """A plan as the scheduler builds it: one-token decode chunks go to ``plan.decodes``."""
    plan = StepPlan(num_layers=num_layers, **kw)
    for c in chunks:
        if not c.is_prefill and c.n_tokens == 1 and c.start == c.req.num_computed:
            plan.decodes.append(c.req)
        else:
            plan.chunks.append(c)
    return plan


def apply(result: StepResult, chunks: list[Chunk], outputs: dict[int, list[int]]) -> None:
    """What the scheduler does after a completed step."""
    assert result.layers_done is None
    for c in chunks:
        c.req.num_computed = c.start + c.n_tokens
    for rid, toks in (result.sampled or {}).items():
        req = next(c.req for c in chunks if c.req.id == rid)
        req.content.append_tokens(toks)
        req.num_tokens += len(toks)
        outputs.setdefault(rid, []).extend(toks)


def next_chunk(req: Request, pool: BlockPool, chunk_size: int) -> Chunk:
    n = min(req.num_tokens - req.num_computed, chunk_size)
    pool.ensure(req, req.num_computed + n)
    return Chunk(req, req.num_computed, n, req.num_computed < req.prompt_len)


def generate(executor, reqs: list[Request], pool: BlockPool, chunk_size: int = 10_000,
             max_steps: int = 1000) -> dict[int, list[int]]:
    """Run all requests to max_tokens or a stop, every request in every step."""
    outputs: dict[int, list[int]] = {r.id: [] for r in reqs}
    live = list(reqs)
    for _ in range(max_steps):
        if not live:
            return outputs
        chunks = [next_chunk(r, pool, chunk_size) for r in live]
        result = executor.execute(plan_of(chunks, executor.num_layers))
        apply(result, chunks, outputs)
        live = [r for r in live if r.id not in result.finished
                and len(outputs[r.id]) < r.max_tokens]
    raise RuntimeError("generate did not finish")


class InterruptAt(threading.Event):
    """Reports an arrival at the ``k``-th layer boundary the executor checks."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.left = k

    def is_set(self) -> bool:
        self.left -= 1
        return self.left == 0


_HF_CACHE: dict[str, object] = {}


def hf_greedy(model_dir: Path, prompt: list[int], n: int, eos: set[int]) -> list[int]:
    """Greedy continuation by transformers' reference forward (fp32, CPU, no cache)."""
    from transformers import AutoModelForCausalLM

    key = str(model_dir)
    if key not in _HF_CACHE:
        _HF_CACHE[key] = AutoModelForCausalLM.from_pretrained(
            key, dtype=torch.float32).eval()
    model = _HF_CACHE[key]
    ids = list(prompt)
    out: list[int] = []
    with torch.no_grad():
        past = None
        feed = torch.tensor([ids])
        for _ in range(n):
            res = model(input_ids=feed, past_key_values=past, use_cache=True)
            past = res.past_key_values
            tok = int(res.logits[0, -1].argmax())
            out.append(tok)
            if tok in eos:
                break
            feed = torch.tensor([[tok]])
    return out
