"""DP + EP lock step: MoE layers priced on the ranks' actual token counts when vLLM does not
pad the ranks (sim/lockstep.py ``dp_padded``, perf/roofline.py ``moe_time``)."""

from __future__ import annotations

import copy
from functools import lru_cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.core.plan import BatchStats
from sluice.metrics.records import RequestRecord
from sluice.perf.registry import build_perf_model
from sluice.perf.roofline import StepCostModel, agrs_exchange_tokens
from sluice.sim.lockstep import LockstepLoop, cudagraph_max_tokens, dp_padded, rank_tokens
from sluice.sim.runner import SimConfig, build_engine
from sluice.workload.base import ListWorkload
from conftest import make_request

MODEL, GPU = "qwen3-30b-a3b", "rtx-pro-6000"  # the DP2+EP configuration of the e2e runs


@lru_cache(maxsize=None)
def _perf(ep: int = 2, model: str = MODEL, gpu: str = GPU) -> StepCostModel:
    return build_perf_model(model, gpu, tp=1, kind="fitted", ep=ep,
                            max_num_batched_tokens=2048, max_num_seqs=128)


def _prefill(n: int, ctx: int = 0) -> BatchStats:
    return BatchStats(prefill_tokens=n, prefill_seqs=1, prefill_ctx=ctx, max_prefill_chunk=n,
                      prefill_attn=n * ctx + n * (n + 1) / 2)


def _decode(seqs: int, ctx: int = 1500) -> BatchStats:
    return BatchStats(decode_seqs=seqs, decode_ctx=seqs * ctx)


def _lockstep_price(perf: StepCostModel, stats: list[BatchStats], graph_max: int) -> float:
    """The step's span by the lock step's rule: each busy rank's own price when vLLM pads the
    ranks, else its price on the ranks' actual counts; the slowest rank sets the pace."""
    tokens = tuple(s.total_tokens or 1.0 for s in stats)
    ranks = None if dp_padded(tokens, graph_max) else tokens
    return max(perf.step_time(s, moe_ranks=ranks) for s in stats if s.total_tokens)


# -- vLLM's padding rule ----------------------------------------------------------------------
def test_cuda_graph_limit_and_padding_rule_follow_vllm():
    assert cudagraph_max_tokens(128, 2048) == 256  # min(2 * max_num_seqs, 512, budget)
    assert cudagraph_max_tokens(256, 2048) == 512
    assert cudagraph_max_tokens(1024, 8192) == 512
    assert cudagraph_max_tokens(256, 128) == 128
    assert dp_padded((256.0, 1.0), 256)  # every rank runs a CUDA graph: padded to the max
    assert not dp_padded((257.0, 1.0), 256)  # one rank runs eagerly: each keeps its count
    assert not dp_padded((1.0, 1.0), 0)  # eager (no CUDA graphs): never padded
    assert rank_tokens([None, None]) == (1.0, 1.0)  # an idle rank runs a one-token dummy batch


def test_exchange_is_the_padded_all_reduce_when_balanced_and_bound_by_the_busiest_link():
    assert agrs_exchange_tokens((300.0, 300.0)) == 600.0
    assert agrs_exchange_tokens((300.0,) * 4) == 1200.0
    assert agrs_exchange_tokens((2048.0, 100.0)) == 4096.0  # two ranks: twice the larger
    assert agrs_exchange_tokens((2048.0, 100.0, 100.0, 100.0)) < 4 * 2048.0


# -- the perf model's hook --------------------------------------------------------------------
@pytest.mark.parametrize("ep", [2, 4])
def test_unbalanced_unpadded_step_is_cheaper_than_max_times_ep_and_equal_when_balanced(ep):
    perf = _perf(ep, gpu="h100") if ep == 4 else _perf(ep)
    heavy, light = _prefill(2048), _decode(100)
    others = (100.0,) * (ep - 1)
    assert perf.step_time(heavy, moe_ranks=(2048.0,) + others) < perf.step_time(heavy)
    assert perf.moe_time(2048.0, (2048.0,) + others) < perf.moe_time(2048.0)
    # the light rank now waits on the heavy rank's tokens in every MoE layer
    assert perf.step_time(light, moe_ranks=(100.0, 2048.0) + others[1:]) > perf.step_time(light)
    for stats in (heavy, light, _prefill(300, 700)):
        n = stats.total_tokens
        assert perf.step_time(stats, moe_ranks=(n,) * ep) == perf.step_time(stats)  # bit-exact


def test_default_pricing_is_untouched_and_fast_forward_stays_exact():
    perf = _perf(2)
    for batch in (1, 7, 64, 128):
        run = perf.decode_run(batch, 5000, 6)
        for i, t in enumerate(run):
            stats = _decode(batch, 0)
            stats.decode_ctx = 5000 + i * batch
            assert t == perf.step_time(stats) == perf.step_time(stats, moe_ranks=None)


def test_a_dense_model_ignores_the_ranks():
    dense = build_perf_model("llama-3.1-8b", GPU, tp=1, kind="fitted")
    for stats in (_prefill(2048), _decode(50)):
        assert dense.step_time(stats, moe_ranks=(2048.0, 50.0)) == dense.step_time(stats)


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(1, 2048), min_size=2, max_size=2),
       rank=st.integers(0, 1), extra=st.integers(1, 600), decode=st.booleans())
def test_more_tokens_on_any_rank_never_make_the_step_cheaper(counts, rank, extra, decode):
    """Within each of vLLM's regimes (ranks padded, or each with its own count)."""
    perf = _perf(2)
    make = (lambda n: _decode(n)) if decode else (lambda n: _prefill(n, 500))
    more = list(counts)
    more[rank] += extra
    for graph_max in (0, 10**9):  # never padded / always padded
        before = _lockstep_price(perf, [make(n) for n in counts], graph_max)
        after = _lockstep_price(perf, [make(n) for n in more], graph_max)
        assert after >= before


# -- through the lock step --------------------------------------------------------------------
def _engines(ep: int, model: str = MODEL) -> list:
    cfg = SimConfig(model=model, gpu=GPU, tp=1, policy="vllm", block_size=16,
                    max_num_seqs=128, max_num_batched_tokens=2048, fast_forward=False,
                    dp=2, expert_parallel=ep > 1)
    perf = _perf(ep, model) if ep > 1 else build_perf_model(model, GPU, tp=1, kind="fitted",
                                                      max_num_batched_tokens=2048,
                                                      max_num_seqs=128)
    return [build_engine(cfg, perf) for _ in range(2)]


def _workload() -> list:
    """A long prompt on one rank while short ones decode on the other: unbalanced steps."""
    reqs = [make_request(0, 0.0, 6000, 20)]
    reqs += [make_request(i, 0.001 * i, 40 + 7 * i, 30 + i) for i in range(1, 24)]
    return reqs


def _run(ep: int, graph_max: int | None, model: str = MODEL):
    """Each step's (end, start, the ranks' durations as ``begin`` priced them, the ranks'
    tokens) and the records."""
    engines = _engines(ep, model)
    priced: list[list[float | None]] = []
    for engine in engines:
        def begin(now, _orig=engine.begin):
            b = _orig(now)
            priced.append(None if b is None else b[1].duration)
            return b
        engine.begin = begin
    loop = LockstepLoop(engines, ListWorkload(copy.deepcopy(_workload())),
                        cudagraph_max=graph_max)
    steps = []
    start = loop._start_step

    def start_step(now):
        priced.clear()
        start(now)
        if loop._inflight is not None:
            st = loop._inflight
            steps.append((st.end, now, list(priced), rank_tokens(st.begun)))
    loop._start_step = start_step
    ended = []
    loop.on_request_end = ended.append
    loop.run()
    return steps, sorted(repr(RequestRecord.of(r)) for r in ended)


def test_padded_steps_keep_the_ranks_own_prices():
    steps, _ = _run(2, 10**9)  # every step fits a CUDA graph: padded
    assert steps
    for end, start, priced, _tokens in steps:
        assert end == start + max(d for d in priced if d is not None)


def test_unpadded_unbalanced_steps_are_priced_on_the_ranks_actual_tokens():
    steps, _ = _run(2, None)  # vLLM's default limit: min(2 x 128, 512, 2048) = 256
    unpadded = [s for s in steps if not dp_padded(s[3], 256)]
    padded = [s for s in steps if dp_padded(s[3], 256)]
    assert unpadded and padded
    for end, start, priced, _tokens in padded:
        assert end == start + max(d for d in priced if d is not None)
    cheaper = 0
    for end, start, priced, tokens in unpadded:
        old = start + max(d for d in priced if d is not None)
        assert end <= old
        cheaper += end < old and min(tokens) < max(tokens)
    assert cheaper > 0
