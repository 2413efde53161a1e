"""Model architecture read from a Hugging Face ``config.json``.

Why a dataclass of our own instead of ``transformers.PretrainedConfig``: the engine must not
depend on transformers at run time, and we support one family (Llama and its close cousins
Mistral, Qwen2, Qwen3, SmolLM2), so every field the model reads is named here, with the family
differences (qkv bias, q/k norm, RoPE scaling) made explicit instead of hidden behind
``model_type`` checks scattered through the model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sluice.errors import ConfigError

SUPPORTED_TYPES = ("llama", "mistral", "qwen2", "qwen3")
SUPPORTED_ROPE = ("default", "linear", "llama3")


@dataclass(slots=True, frozen=True)
class RopeScaling:
    """RoPE frequency scaling; ``kind`` is one of :data:`SUPPORTED_ROPE`."""

    kind: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192


@dataclass(slots=True, frozen=True)
class ModelConfig:
    """The numbers a Llama-family forward needs."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: RopeScaling
    max_position: int
    tie_word_embeddings: bool
    qkv_bias: bool  # bias on q/k/v projections (Qwen2, Llama with attention_bias)
    o_bias: bool  # bias on the output projection (Llama attention_bias only)
    mlp_bias: bool
    qk_norm: bool  # per-head RMSNorm on q and k before RoPE (Qwen3)
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim


def load_config(model_dir: str | Path) -> ModelConfig:
    """Read ``model_dir/config.json``; raise :class:`ConfigError` naming what is wrong."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"model directory {model_dir}: no config.json")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON ({e})") from None
    return parse_config(raw, str(path))


def parse_config(raw: dict[str, Any], where: str = "config.json") -> ModelConfig:
    """Build a :class:`ModelConfig` from a parsed ``config.json`` dict."""
    if "text_config" in raw and "hidden_size" not in raw:
        raw = raw["text_config"]
    mtype = raw.get("model_type", "")
    if mtype not in SUPPORTED_TYPES:
        raise ConfigError(f"{where}: unsupported model_type {mtype!r}; "
                          f"supported: {', '.join(SUPPORTED_TYPES)}")

    def need(key: str) -> Any:
        if key not in raw:
            raise ConfigError(f"{where}: missing field {key!r}")
        return raw[key]

    hidden = int(need("hidden_size"))
    heads = int(need("num_attention_heads"))
    kv_heads = int(raw.get("num_key_value_heads") or heads)
    head_dim = int(raw.get("head_dim") or hidden // heads)
    if heads % kv_heads:
        raise ConfigError(f"{where}: num_attention_heads {heads} is not a multiple of "
                          f"num_key_value_heads {kv_heads}")
    if head_dim % 2:
        raise ConfigError(f"{where}: head_dim must be even for RoPE, got {head_dim}")
    attn_bias = bool(raw.get("attention_bias", False))
    max_pos = int(raw.get("max_position_embeddings", 4096))
    window = raw.get("sliding_window")
    if window and raw.get("use_sliding_window", True) and int(window) < max_pos:
        # We do not implement sliding windows; below the window attention is exact.
        max_pos = int(window)
    eos = raw.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
    return ModelConfig(
        model_type=mtype,
        vocab_size=int(need("vocab_size")),
        hidden_size=hidden,
        intermediate_size=int(need("intermediate_size")),
        num_layers=int(need("num_hidden_layers")),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        rope_theta=_rope_theta(raw),
        rope_scaling=_rope_scaling(raw, where),
        max_position=max_pos,
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        qkv_bias=attn_bias or mtype == "qwen2",
        o_bias=attn_bias and mtype in ("llama", "mistral"),
        mlp_bias=bool(raw.get("mlp_bias", False)),
        qk_norm=mtype == "qwen3",
        bos_token_id=raw.get("bos_token_id"),
        eos_token_ids=tuple(int(e) for e in eos_ids),
    )


def _rope_params(raw: dict[str, Any]) -> dict[str, Any]:
    """Newer transformers write ``rope_parameters``; older ones ``rope_scaling``."""
    params = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    return params if isinstance(params, dict) else {}


def _rope_theta(raw: dict[str, Any]) -> float:
    theta = _rope_params(raw).get("rope_theta") or raw.get("rope_theta") or 10000.0
    theta = float(theta)
    if not (theta > 0 and math.isfinite(theta)):
        raise ConfigError(f"rope_theta must be a positive number, got {theta}")
    return theta


def _rope_scaling(raw: dict[str, Any], where: str) -> RopeScaling:
    p = _rope_params(raw)
    kind = p.get("rope_type") or p.get("type") or "default"
    if kind not in SUPPORTED_ROPE:
        raise ConfigError(f"{where}: unsupported RoPE scaling {kind!r}; "
                          f"supported: {', '.join(SUPPORTED_ROPE)}")
    if kind == "default":
        return RopeScaling()
    return RopeScaling(
        kind=kind,
        factor=float(p.get("factor", 1.0)),
        low_freq_factor=float(p.get("low_freq_factor", 1.0)),
        high_freq_factor=float(p.get("high_freq_factor", 4.0)),
        original_max_position=int(p.get("original_max_position_embeddings", 8192)),
    )
