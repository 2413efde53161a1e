"""End to end on the tiny model: the real Scheduler + KVCache + Engine drive TorchExecutor.

A cache far smaller than the load forces preemption (recompute or swap), shared prompt
prefixes hit the prefix cache, a small token budget chunks prefills, layered prefill splits
them by layers, an arrival interrupts a prefill - and every request's greedy output still
equals transformers' reference, with the KV cache empty at the end."""

from __future__ import annotations

import pytest

import torch  # noqa: F401 - required, never skipped
import transformers  # noqa: F401 - required, never skipped

from test_torch_driver import InterruptAt, hf_greedy

from sluice.core.config import SchedulerConfig
from sluice.core.content import Content
from sluice.core.engine import Engine
from sluice.core.kv import KVCache
from sluice.core.request import Request, RequestState
from sluice.core.scheduler import Scheduler
from sluice.executors.torch.executor import TorchExecutor
from sluice.executors.torch.prepare import prepare
from sluice.policies.base import make_policy

BS = 4
SHARED = [7, 31, 150, 9, 88, 201, 64, 5]  # two full blocks every prompt starts with
TAILS = [[12, 99, 3], [250, 41, 77, 8, 16, 200, 31], [100], [60, 61, 62, 63, 64], [17] * 6,
         [220, 221]]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return prepare("tiny", tmp_path_factory.mktemp("tiny"))


def run_engine(tiny_dir, policy: str, blocks: int, interrupt=None, options=None, **sched):
    pol = make_policy(policy, **(options or {}))
    host = blocks if sched.get("preemption_mode") == "swap" else 0
    ex = TorchExecutor(tiny_dir, num_gpu_blocks=blocks, block_size=BS, num_host_blocks=host)
    if interrupt is not None:
        ex.interrupt = interrupt
    ex.plans = []
    execute = ex.execute

    def recording(plan):
        ex.plans.append(plan)
        return execute(plan)

    ex.execute = recording
    cfg = SchedulerConfig(block_size=BS, max_model_len=256).with_overrides(
        dict(pol.scheduler_defaults)).with_overrides(sched)
    kv = KVCache(blocks, BS, enable_prefix_caching=cfg.enable_prefix_caching,
                 num_host_blocks=host)
    engine = Engine(Scheduler(cfg, pol, kv, num_layers=ex.num_layers), ex)
    reqs = [Request(id=i, arrival=0.0, content=Content(tokens=SHARED + t), max_tokens=10)
            for i, t in enumerate(TAILS)]
    now = 0.0
    for r in reqs[:3]:
        engine.add_request(r, now)
    late = reqs[3:]
    for _ in range(500):
        engine.step(now)
        now += 1e-3
        if engine.steps == 2 and late:  # later arrivals join a running batch
            for r in late:
                engine.add_request(r, now)
            late = []
        if not late and not engine.has_work:
            break
    assert all(r.state == RequestState.FINISHED for r in reqs), [r.state for r in reqs]
    assert kv.num_used == 0 or kv.num_used == kv.pinned_blocks
    return ex, engine, reqs


def check_outputs(tiny_dir, ex, reqs) -> None:
    for r in reqs:
        out = r.content.tokens[r.prompt_len:]
        assert out == hf_greedy(tiny_dir, r.content.tokens[:r.prompt_len], r.max_tokens,
                                set(ex.eos_token_ids)), f"request {r.id}"


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_preemption_prefix_hits_chunking(tiny_dir, mode):
    ex, engine, reqs = run_engine(tiny_dir, "vllm", blocks=16, preemption_mode=mode,
                                  max_num_batched_tokens=8)
    assert engine.scheduler.num_preemptions > 0
    assert sum(r.cached_tokens for r in reqs) > 0
    assert max(len(p.chunks) + len(p.decodes) for p in ex.plans) > 1
    if mode == "swap":
        assert any(p.swap_out for p in ex.plans) and any(p.swap_in for p in ex.plans)
    check_outputs(tiny_dir, ex, reqs)


def test_layered_prefill_policy(tiny_dir):
    ex, engine, reqs = run_engine(tiny_dir, "layered_prefill", blocks=64,
                                  options={"layers_per_step": 2})
    assert any(c.until_layer for p in ex.plans for c in p.chunks)
    assert any(c.skip_layers for p in ex.plans for c in p.chunks)
    check_outputs(tiny_dir, ex, reqs)


def test_interrupted_prefill_through_scheduler(tiny_dir):
    stop = InterruptAt(2)
    ex, engine, reqs = run_engine(tiny_dir, "flowprefill", blocks=64, interrupt=stop,
                                  options={"default_ttft": 1.0},
                                  max_num_batched_tokens=64)
    assert stop.left < 0  # the cut happened
    assert any(c.skip_layers for p in ex.plans for c in p.chunks)
    check_outputs(tiny_dir, ex, reqs)
