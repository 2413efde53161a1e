"""``sluice model prepare``: deterministic tiny model, tokenizer and chat template, the GGUF
Q/K row order, and the CLI's handling of bad names."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

import torch  # noqa: F401 - required, never skipped

from sluice.errors import ConfigError
from sluice.executors.torch import cli
from sluice.executors.torch.gguf_import import unpermute_rope_rows
from sluice.executors.torch.prepare import DONE_MARKER, prepare
from sluice.executors.torch.tokenizer import Tokenizer


def test_tiny_is_byte_identical_across_runs(tmp_path):
    a, b = prepare("tiny", tmp_path / "a"), prepare("tiny", tmp_path / "b")
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / DONE_MARKER).is_file()


def test_prepare_reuses_finished_dir(tmp_path):
    d = prepare("tiny", tmp_path / "m")
    stamp = (d / "model.safetensors").stat().st_mtime_ns
    prepare("tiny", d)
    assert (d / "model.safetensors").stat().st_mtime_ns == stamp


def test_tiny_tokenizer_round_trips_any_text(tmp_path):
    tok = Tokenizer(prepare("tiny", tmp_path / "t"))
    text = "Hello, wörld! 12345 — ✓ 日本"
    ids = tok.encode(text)
    assert len(ids) == len(text.encode()) and tok.decode(ids) == text
    assert tok.eos_token_ids == frozenset({2})


def test_chat_template_matches_transformers(tmp_path):
    import transformers
    d = prepare("tiny", tmp_path / "t")
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    ours = Tokenizer(d).apply_chat_template(msgs)
    hf = transformers.AutoTokenizer.from_pretrained(str(d))
    assert ours == hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert Tokenizer(d).encode(ours) == hf(ours)["input_ids"]


def test_chat_template_rejects_bad_messages(tmp_path):
    tok = Tokenizer(prepare("tiny", tmp_path / "t"))
    with pytest.raises(ConfigError, match="messages\\[0\\]"):
        tok.apply_chat_template([{"content": "no role"}])


def _llamacpp_order(w: np.ndarray, n_heads: int) -> np.ndarray:
    """How llama.cpp's converter stores Q/K rows: within each head, row i of the first half
    and row i of the second half become neighbours (2i, 2i+1)."""
    d = w.shape[0] // n_heads
    out = np.empty_like(w)
    for h in range(n_heads):
        for i in range(d // 2):
            out[h * d + 2 * i] = w[h * d + i]
            out[h * d + 2 * i + 1] = w[h * d + d // 2 + i]
    return out


@pytest.mark.parametrize("heads", [1, 3, 9])
def test_unpermute_inverts_llamacpp_row_order(heads):
    w = np.arange(heads * 8 * 5, dtype=np.float32).reshape(heads * 8, 5)
    assert np.array_equal(unpermute_rope_rows(_llamacpp_order(w, heads), heads), w)


def _parse(argv):
    parser = argparse.ArgumentParser(prog="sluice")
    cli.add_parser(parser.add_subparsers(dest="cmd"))
    return parser.parse_args(argv)


def test_cli_prepare_tiny(tmp_path, capsys):
    args = _parse(["model", "prepare", "tiny", "--dir", str(tmp_path / "x")])
    assert args.func(args) == 0
    assert (tmp_path / "x" / "config.json").is_file()
    assert str(tmp_path / "x") in capsys.readouterr().out


def test_cli_unknown_model_exits_2(tmp_path, capsys):
    args = _parse(["model", "prepare", "llama-70b", "--dir", str(tmp_path / "y")])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert "unknown model 'llama-70b'" in err and "smollm2-135m" in err and "Traceback" not in err
