"""Load a local Hugging Face model directory (``config.json`` + ``*.safetensors``).

The module is built on the ``meta`` device and the checkpoint tensors are *assigned* into it,
so loading never spends time on a random init or holds two copies of the weights. Missing
tensors are an error naming them; known-harmless extras (RoPE buffers some exporters save) are
skipped, anything else unexpected is an error too, since it means a different architecture.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sluice.errors import ConfigError
from sluice.executors.torch.config import ModelConfig, load_config
from sluice.executors.torch.model import CausalLM

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; valid: {', '.join(sorted(DTYPES))}")
    return DTYPES[name]


def parse_device(name: str | torch.device) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available")
    return device


def load_model(model_dir: str | Path, device: torch.device, dtype: torch.dtype
               ) -> tuple[CausalLM, ModelConfig]:
    """Build the model described by ``model_dir/config.json`` with its checkpoint weights."""
    cfg = load_config(model_dir)
    with torch.device("meta"):
        model = CausalLM(cfg)
    state = _read_safetensors(Path(model_dir), device, dtype)
    expected = dict(model.state_dict())
    if cfg.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
        state.pop("lm_head.weight", None)
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected
                        and not k.endswith(_IGNORED_SUFFIXES))
    if missing or unexpected:
        raise ConfigError(f"{model_dir}: checkpoint does not match config.json "
                          f"(missing: {missing[:5]}, unexpected: {unexpected[:5]})")
    for name, tensor in state.items():
        if name in expected and tuple(tensor.shape) != tuple(expected[name].shape):
            raise ConfigError(f"{model_dir}: tensor {name} has shape {tuple(tensor.shape)}, "
                              f"config.json implies {tuple(expected[name].shape)}")
    model.load_state_dict({k: v for k, v in state.items() if k in expected},
                          strict=False, assign=True)
    model.tie_weights()
    model.eval().requires_grad_(False)
    return model, cfg


def _read_safetensors(model_dir: Path, device: torch.device, dtype: torch.dtype
                      ) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"model directory {model_dir}: no *.safetensors files")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        for name, tensor in load_file(str(f)).items():
            state[name] = tensor.to(device=device, dtype=dtype)
    return state
