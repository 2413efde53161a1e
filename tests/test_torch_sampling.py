"""Sampling: parameter validation, seeded determinism across batching/preemption, top-k/top-p
edge cases, logprobs, EOS / stop token / stop string detection (tiny model)."""

from __future__ import annotations

import math

import pytest

import torch

from test_torch_driver import BlockPool, generate, make_req, next_chunk, plan_of

from sluice.executors.torch.executor import TorchExecutor
from sluice.executors.torch.prepare import prepare
from sluice.executors.torch.sampling import SamplingParams, sample_rows, token_seed

BS, N_BLOCKS = 4, 64
PROMPT = [5, 17, 99, 3, 250, 41, 77, 8]


@pytest.fixture(scope="module")
def ex(tmp_path_factory):
    d = prepare("tiny", tmp_path_factory.mktemp("tiny"))
    return TorchExecutor(d, num_gpu_blocks=N_BLOCKS, block_size=BS)


def run(ex, sampling, max_tokens=10, others=()):
    reqs = [make_req(0, PROMPT, max_tokens, sampling)]
    reqs += [make_req(i + 1, p, max_tokens) for i, p in enumerate(others)]
    return generate(ex, reqs, BlockPool(N_BLOCKS, BS))[0]


@pytest.mark.parametrize("kw, msg", [({"temperature": -1}, "temperature"),
                                     ({"top_p": 0}, "top_p"), ({"top_k": -2}, "top_k"),
                                     ({"stop": ("",)}, "stop")])
def test_bad_params_rejected(kw, msg):
    with pytest.raises(ValueError, match=msg):
        SamplingParams(**kw)


def test_stop_accepts_single_string_list_or_none():
    assert SamplingParams(stop="x").stop == ("x",)
    assert SamplingParams(stop=["a", "b"]).stop == ("a", "b")
    assert SamplingParams(stop=None, stop_token_ids=None).stop == ()


def test_seeded_sampling_is_reproducible_and_batch_independent(ex):
    sp = SamplingParams(temperature=1.0, seed=1234)
    alone = run(ex, sp)
    batched = run(ex, sp, others=([9, 9, 9], [100] * 7))
    assert alone == batched
    assert run(ex, SamplingParams(temperature=1.0, seed=99)) != alone


def test_topk1_and_tiny_topp_are_greedy(ex):
    greedy = run(ex, None)
    assert run(ex, SamplingParams(temperature=0.8, top_k=1, seed=3)) == greedy
    assert run(ex, SamplingParams(temperature=1.5, top_p=1e-6, seed=3)) == greedy


def test_top_k_restricts_support():
    logits = torch.tensor([[0.0, 5.0, 4.9, -1.0, 3.0]])
    sp = SamplingParams(temperature=5.0, top_k=2)
    picks = {sample_rows(logits, [sp], [7], [p])[0] for p in range(200)}
    assert picks == {1, 2}


def test_top_p_keeps_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    sp = SamplingParams(top_p=0.7)
    picks = {sample_rows(logits, [sp], [1], [p])[0] for p in range(300)}
    assert picks == {0, 1}


def test_token_seed_differs_by_position():
    assert len({token_seed(5, p) for p in range(1000)}) == 1000


def test_logprobs_match_hf(ex):
    """The reported logprob is log-softmax of the raw logits, whatever the temperature."""
    import transformers
    pool = BlockPool(N_BLOCKS, BS)
    r = make_req(0, PROMPT, 2, SamplingParams(temperature=0.7, seed=5, logprobs=True))
    res = ex.execute(plan_of([next_chunk(r, pool, 100)], ex.num_layers))
    [tok], [lp] = res.sampled[0], res.logprobs[0]
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(ex.model_dir),
                                                           dtype=torch.float32)
    with torch.no_grad():
        logits = hf(input_ids=torch.tensor([PROMPT])).logits[0, -1]
    assert lp == pytest.approx(float(torch.log_softmax(logits, -1)[tok]), abs=1e-4)


def test_stop_token_ids_and_eos(ex):
    greedy = run(ex, None, max_tokens=8)
    target = greedy[3]
    first = greedy.index(target)
    out = run(ex, SamplingParams(temperature=0.0, stop_token_ids=(target,)), max_tokens=8)
    assert out == greedy[:first + 1]
    ex_eos = ex.eos_token_ids
    try:
        ex.eos_token_ids = frozenset({target})
        assert run(ex, None, max_tokens=8) == greedy[:first + 1]
        assert run(ex, SamplingParams(temperature=0.0, ignore_eos=True), 8) == greedy
    finally:
        ex.eos_token_ids = ex_eos


def test_stop_string_spanning_tokens(ex):
    greedy = run(ex, None, max_tokens=10)
    text = ex.tokenizer.decode(greedy[4:7])
    assert len(text) >= 2
    out = run(ex, SamplingParams(temperature=0.0, stop=(text,)), max_tokens=10)
    assert text in ex.tokenizer.decode(out)
    assert text not in ex.tokenizer.decode(out[:-1])
    assert out == greedy[:len(out)]


def test_sampling_must_be_params(ex):
    pool = BlockPool(N_BLOCKS, BS)
    r = make_req(0, PROMPT, 2, sampling={"temperature": 1})
    with pytest.raises(ValueError, match="SamplingParams"):
        ex.execute(plan_of([next_chunk(r, pool, 100)], ex.num_layers))
