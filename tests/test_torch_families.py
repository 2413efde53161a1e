"""Family variants against transformers: Qwen2 (qkv bias), Qwen3 (q/k norm, explicit head_dim),
Llama with llama3 / linear RoPE scaling and attention bias, Mistral. Each is a small random
model written by transformers itself, so the config.json and tensor names are the real ones."""

from __future__ import annotations

import pytest

import torch
import transformers

from test_torch_driver import BlockPool, generate, hf_greedy, make_req

from sluice.errors import ConfigError
from sluice.executors.torch.config import parse_config
from sluice.executors.torch.executor import TorchExecutor

BASE = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
VARIANTS = {
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 24}),
    "llama3-rope": ("LlamaConfig", "LlamaForCausalLM", {
        "attention_bias": True, "rope_scaling": {
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 32}}),
    "linear-rope": ("LlamaConfig", "LlamaForCausalLM",
                    {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
}
PROMPTS = [[5, 17, 99, 3, 250, 41, 77, 8, 16, 200, 31], [100, 101]]


def _write(kind: str, out) -> None:
    cfg_cls, model_cls, extra = VARIANTS[kind]
    cfg = getattr(transformers, cfg_cls)(**BASE, **extra)
    model = getattr(transformers, model_cls)(cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # larger than HF's init so greedy picks are far from ties
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            elif p.dim() == 1:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            elif "embed" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                p.copy_(3 * torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)
    model.save_pretrained(str(out))


@pytest.mark.parametrize("kind", list(VARIANTS))
def test_family_matches_hf(kind, tmp_path):
    _write(kind, tmp_path)
    ex = TorchExecutor(tmp_path, num_gpu_blocks=32, block_size=4)
    reqs = [make_req(i, p, max_tokens=8) for i, p in enumerate(PROMPTS)]
    outs = generate(ex, reqs, BlockPool(32, 4), chunk_size=4)
    for i, p in enumerate(PROMPTS):
        assert outs[i] == hf_greedy(tmp_path, p, 8, set(ex.eos_token_ids)), f"{kind} req {i}"


def test_config_family_flags():
    q2 = parse_config({**BASE, "model_type": "qwen2"})
    assert q2.qkv_bias and not q2.o_bias and not q2.qk_norm
    q3 = parse_config({**BASE, "model_type": "qwen3", "head_dim": 24})
    assert q3.qk_norm and q3.head_dim == 24 and q3.q_size == 96
    ll = parse_config({**BASE, "model_type": "llama", "attention_bias": True})
    assert ll.qkv_bias and ll.o_bias
    mi = parse_config({**BASE, "model_type": "mistral", "sliding_window": 128})
    assert mi.max_position == 128  # no sliding-window kernel: cap the context instead


@pytest.mark.parametrize("patch, msg", [
    ({"model_type": "gpt2"}, "unsupported model_type"),
    ({"model_type": "llama", "rope_scaling": {"rope_type": "yarn", "factor": 4}}, "yarn"),
    ({"model_type": "llama", "num_key_value_heads": 3}, "multiple"),
])
def test_config_errors_name_the_problem(patch, msg):
    with pytest.raises(ConfigError, match=msg):
        parse_config({**BASE, **patch})


def test_config_missing_field():
    raw = {k: v for k, v in BASE.items() if k != "hidden_size"}
    with pytest.raises(ConfigError, match="hidden_size"):
        parse_config({**raw, "model_type": "llama"})
