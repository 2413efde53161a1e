"""Model architecture read from a Hugging Face ``config.json``.

Why: every cost in a step (GEMM FLOPs, weight bytes, KV bytes, expert work) follows from a
handful of architecture numbers, so one parser covering Llama/Qwen/Mistral/Mixtral/Qwen-MoE
configs lets sluice price any such model without profiling it. Shipped configs live in
``sluice/data/models/<id>/config.json`` (sources in the README there).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from sluice.errors import ConfigError, unknown_name

_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "fp8": 1, "float8": 1, "int8": 1}


@dataclass(frozen=True, slots=True)
class ModelArch:
    """The numbers of a decoder-only transformer that its serving cost depends on."""

    name: str
    num_layers: int
    hidden: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate: int  # dense MLP width (per expert for MoE when no separate moe width)
    vocab: int
    tie_embeddings: bool
    weight_bytes: int  # bytes per weight element (2 for bf16, 1 for fp8)
    kv_bytes: int  # bytes per KV element (vLLM kv_cache_dtype=auto follows the model dtype)
    max_position_embeddings: int
    num_experts: int = 0  # 0 = dense
    top_k: int = 0
    moe_intermediate: int = 0
    shared_intermediate: int = 0  # always-on shared expert width (Qwen2-MoE style), 0 = none
    # RMSNorm applied per head to q and k before rotary (Qwen3: ``q_norm``/``k_norm`` on
    # head_dim); two more memory-bound passes per layer that Llama-style models do not run
    qk_norm: bool = False

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def attn_params(self) -> int:
        """q, k, v and o projection weights of one layer."""
        return self.hidden * (self.q_dim + 2 * self.kv_dim) + self.q_dim * self.hidden

    def mlp_params(self) -> int:
        """Dense gated MLP (gate, up, down) of one layer; for MoE the shared expert only."""
        if self.is_moe:
            return 3 * self.hidden * self.shared_intermediate
        return 3 * self.hidden * self.intermediate

    def expert_params(self) -> int:
        """One routed expert's gate/up/down weights."""
        return 3 * self.hidden * self.moe_intermediate

    def layer_params(self) -> int:
        experts = self.num_experts * self.expert_params() + self.hidden * self.num_experts
        return self.attn_params() + self.mlp_params() + experts + 2 * self.hidden

    def embed_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tie_embeddings else 2)

    def total_params(self) -> int:
        return self.num_layers * self.layer_params() + self.embed_params() + self.hidden

    def weight_total_bytes(self) -> int:
        return self.total_params() * self.weight_bytes

    def kv_bytes_per_token(self) -> int:
        """K and V of all layers for one token (whole model, before TP sharding)."""
        return 2 * self.num_layers * self.kv_dim * self.kv_bytes


# HF ``model_type``s whose attention normalises q and k per head (``Qwen3Attention`` /
# ``Qwen3MoeAttention`` in transformers and vLLM: ``q_norm = RMSNorm(head_dim)`` and ``k_norm``
# applied to q and k viewed per head). The config has no field for it: the architecture implies it.
QK_NORM_MODEL_TYPES = frozenset({"qwen3", "qwen3_moe"})


def _need(cfg: dict[str, Any], key: str, path: str) -> Any:
    if key not in cfg or cfg[key] is None:
        raise ConfigError(f"{path}: missing field {key!r} in model config")
    return cfg[key]


def _dtype_bytes(cfg: dict[str, Any]) -> int:
    q = cfg.get("quantization_config") or {}
    qm = str(q.get("quant_method", "")).lower()
    if qm == "fp8" or "float8" in json.dumps(q).lower() or ("fp8" in qm):
        return 1
    dt = str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16").lower()
    return _DTYPE_BYTES.get(dt, 2)


def arch_from_config(cfg: dict[str, Any], name: str, path: str = "config.json") -> ModelArch:
    """Parse a HF config dict. Missing fields raise ConfigError naming field and file."""
    if "text_config" in cfg and "hidden_size" not in cfg:
        cfg = {**cfg, **cfg["text_config"]}
    hidden = int(_need(cfg, "hidden_size", path))
    heads = int(_need(cfg, "num_attention_heads", path))
    layers = int(_need(cfg, "num_hidden_layers", path))
    vocab = int(_need(cfg, "vocab_size", path))
    max_pos = int(_need(cfg, "max_position_embeddings", path))
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    experts = int(cfg.get("num_local_experts") or cfg.get("num_experts") or 0)
    top_k = int(cfg.get("num_experts_per_tok") or 0) if experts else 0
    if experts and not top_k:
        raise ConfigError(f"{path}: missing field 'num_experts_per_tok' in MoE model config")
    if experts:
        inter = int(cfg.get("intermediate_size") or 0)
        moe_inter = int(cfg.get("moe_intermediate_size") or inter)
        if not moe_inter:
            raise ConfigError(f"{path}: missing field 'moe_intermediate_size' in MoE model config")
    else:
        inter = int(_need(cfg, "intermediate_size", path))
        moe_inter = 0
    shared = int(cfg.get("shared_expert_intermediate_size") or 0) if experts else 0
    wb = _dtype_bytes(cfg)
    return ModelArch(name=name, num_layers=layers, hidden=hidden, num_heads=heads,
                     num_kv_heads=kv_heads, head_dim=head_dim, intermediate=inter, vocab=vocab,
                     tie_embeddings=bool(cfg.get("tie_word_embeddings", False)), weight_bytes=wb,
                     kv_bytes=2 if wb == 1 else wb, max_position_embeddings=max_pos,
                     num_experts=experts, top_k=top_k, moe_intermediate=moe_inter,
                     shared_intermediate=shared,
                     qk_norm=str(cfg.get("model_type", "")).lower() in QK_NORM_MODEL_TYPES)


def _data_dir() -> Path:
    return Path(str(resources.files("sluice"))) / "data" / "models"


def list_models() -> list[str]:
    """Short ids of the shipped model configs."""
    d = _data_dir()
    return sorted(p.name for p in d.iterdir() if (p / "config.json").is_file())


def load_arch(model: str) -> ModelArch:
    """A shipped model id, or a path to a ``config.json`` or a directory holding one."""
    p = Path(model).expanduser()
    if p.is_dir():
        p = p / "config.json"
    if p.is_file():
        name = p.parent.name if p.name == "config.json" else p.stem
        return arch_from_config(_read_json(p), name, str(p))
    key = model.strip().lower()
    f = _data_dir() / key / "config.json"
    if not f.is_file():
        if "/" in model or model.endswith(".json"):
            raise ConfigError(f"model config {model!r} not found (no such file or directory)")
        raise unknown_name("model", model, list_models())
    return arch_from_config(_read_json(f), key, str(f))


def _read_json(p: Path) -> dict[str, Any]:
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{p}: cannot read model config: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: model config is not a JSON object")
    return data


# ---- memory plan (vLLM's KV-cache sizing) -------------------------------------------------------
# vLLM v1 (gpu_worker.determine_available_memory) profiles one forward of
# max_num_batched_tokens tokens plus a sampler run of max_num_seqs rows, then gives the KV cache
# total_memory * gpu_memory_utilization - (weights + peak activations + non-torch memory such as
# the CUDA context, cuBLAS/NCCL workspaces and CUDA graphs). We do not run a profile, so the
# activation peak is estimated from the shapes and the fixed part is a constant checked against
# the KV block counts of 8 real vLLM runs (tests/test_perf_kv.py): H100 runs imply 1.3-1.6 GB,
# the RTX 4090 run 1.24 GB.
NON_TORCH_BYTES = 0.8e9


def activation_reserve(arch: ModelArch, tp: int, max_num_batched_tokens: int,
                       max_num_seqs: int) -> float:
    """Peak activation bytes of vLLM's profile run (one layer live at a time + sampler)."""
    inter = arch.shared_intermediate + arch.top_k * arch.moe_intermediate if arch.is_moe \
        else arch.intermediate
    per_token = 4 * arch.hidden + (arch.q_dim + 2 * arch.kv_dim) / tp + 2 * inter / tp
    sampler = max_num_seqs * arch.vocab * 4.0 * 2  # fp32 logits + one working copy
    return max_num_batched_tokens * per_token * 2.0 + sampler


def weight_bytes_per_gpu(arch: ModelArch, tp: int, ep: int = 1) -> float:
    """Weights on one GPU: everything sharded ``tp`` ways, routed experts also ``ep`` ways."""
    experts = arch.num_layers * arch.num_experts * arch.expert_params() * arch.weight_bytes
    return (arch.weight_total_bytes() - experts * (1.0 - 1.0 / ep)) / tp


def kv_cache_bytes(arch: ModelArch, mem_bytes: int, tp: int, gpu_memory_utilization: float,
                   max_num_batched_tokens: int = 2048, max_num_seqs: int = 256, ep: int = 1) -> float:
    """Bytes left for the KV cache on each GPU (may be negative: the model does not fit)."""
    budget = mem_bytes * gpu_memory_utilization
    return (budget - weight_bytes_per_gpu(arch, tp, ep) - NON_TORCH_BYTES
            - activation_reserve(arch, tp, max_num_batched_tokens, max_num_seqs))


def kv_blocks(arch: ModelArch, mem_bytes: int, tp: int, gpu_memory_utilization: float,
              block_size: int, max_num_batched_tokens: int = 2048, max_num_seqs: int = 256,
              ep: int = 1) -> int:
    """KV blocks per GPU as vLLM allocates them (each block holds all layers of its tokens)."""
    free = kv_cache_bytes(arch, mem_bytes, tp, gpu_memory_utilization, max_num_batched_tokens,
                          max_num_seqs, ep)
    kv_heads_gpu = max(arch.num_kv_heads // tp, 1)  # replicated when tp > kv heads
    per_block = block_size * 2 * arch.num_layers * kv_heads_gpu * arch.head_dim * arch.kv_bytes
    return max(int(free // per_block), 0)
