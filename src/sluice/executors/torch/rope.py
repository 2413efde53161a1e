"""Rotary position embeddings (RoPE), including Llama 3 and linear frequency scaling.

Why compute cos/sin per step from the positions instead of caching a table: a step's positions
are scattered (chunks of many requests at arbitrary offsets), a table for a 128k context costs
tens of MB per dtype, and the per-step cost is one small outer product shared by all layers.
Uses the "rotate half" layout of Hugging Face checkpoints (not interleaved pairs).
"""

from __future__ import annotations

import math

import torch

from sluice.executors.torch.config import ModelConfig, RopeScaling


def inv_frequencies(head_dim: int, theta: float, scaling: RopeScaling) -> torch.Tensor:
    """Per-pair inverse frequencies (fp32, ``head_dim // 2``) after scaling."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    inv = 1.0 / (theta ** exponents)
    if scaling.kind == "linear":
        return inv / scaling.factor
    if scaling.kind == "llama3":
        return _llama3_scale(inv, scaling)
    return inv


def _llama3_scale(inv: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    """Llama 3.1: long wavelengths are slowed by ``factor``, short ones kept, a smooth ramp
    in between, so the model extrapolates without losing local position resolution."""
    low_wavelen = s.original_max_position / s.low_freq_factor
    high_wavelen = s.original_max_position / s.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > low_wavelen, inv / s.factor, inv)
    smooth = (s.original_max_position / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor)
    ramp = (1 - smooth) * scaled / s.factor + smooth * scaled
    is_mid = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(is_mid, ramp, scaled)


class Rope:
    """Holds the inverse frequencies of one model on one device."""

    def __init__(self, cfg: ModelConfig, device: torch.device) -> None:
        self.inv_freq = inv_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling).to(device)

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``cos, sin`` of shape ``[T, 1, head_dim]`` for token positions ``[T]``."""
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        angles = torch.cat((freqs, freqs), dim=-1)[:, None, :]
        return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` of shape ``[T, heads, head_dim]`` by its positions' angles."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
