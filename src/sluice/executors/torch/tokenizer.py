"""Tokenizer and chat template of a local Hugging Face model directory.

``tokenizer.json`` is read with the ``tokenizers`` library (no transformers at run time); the
chat template (``tokenizer_config.json``'s ``chat_template`` or ``chat_template.jinja``) is
rendered with a sandboxed Jinja2 environment, the same engine HF templates are written for.
End-of-sequence ids are the union of the generation config, the model config and the
tokenizer's eos token, because checkpoints disagree about where they put them (Llama 3 lists
several in ``generation_config.json`` only).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sluice.errors import ConfigError


class Tokenizer:
    """Encode/decode text and render chat prompts for one model."""

    def __init__(self, model_dir: str | Path) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        d = Path(model_dir)
        path = d / "tokenizer.json"
        if not path.is_file():
            raise ConfigError(f"model directory {model_dir}: no tokenizer.json")
        self._tok = HFTokenizer.from_file(str(path))
        tcfg = _read_json(d / "tokenizer_config.json")
        self.bos_token = _token_text(tcfg.get("bos_token"))
        self.eos_token = _token_text(tcfg.get("eos_token"))
        self.add_bos = bool(tcfg.get("add_bos_token", False))
        template = tcfg.get("chat_template")
        if (d / "chat_template.jinja").is_file():
            template = (d / "chat_template.jinja").read_text()
        self.chat_template: str | None = template if isinstance(template, str) else None
        self._compiled: Any = None
        self.eos_token_ids = self._eos_ids(d)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_id(self, text: str) -> int | None:
        return self._tok.token_to_id(text)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; adds BOS when the tokenizer config asks and it is missing."""
        ids = self._tok.encode(text, add_special_tokens=add_special_tokens).ids
        bos = self.token_id(self.bos_token) if self.bos_token else None
        if add_special_tokens and self.add_bos and bos is not None and ids[:1] != [bos]:
            ids = [bos] + ids
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict[str, Any]],
                            add_generation_prompt: bool = True) -> str:
        """Render ``messages`` (``[{"role", "content"}]``) as the model's chat prompt text."""
        if not self.chat_template:
            raise ConfigError("this model has no chat template; use completions instead")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ConfigError(f"messages[{i}] needs 'role' and 'content'")
        from jinja2 import TemplateError

        if self._compiled is None:
            self._compiled = _compile(self.chat_template)
        try:
            return self._compiled.render(
                messages=messages, add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token or "", eos_token=self.eos_token or "")
        except TemplateError as e:
            raise ConfigError(f"chat template failed on these messages: {e}") from None

    def _eos_ids(self, d: Path) -> frozenset[int]:
        ids: set[int] = set()
        for name in ("generation_config.json", "config.json"):
            eos = _read_json(d / name).get("eos_token_id")
            if isinstance(eos, int):
                ids.add(eos)
            elif isinstance(eos, list):
                ids.update(int(e) for e in eos)
        if self.eos_token and self.token_id(self.eos_token) is not None:
            ids.add(self.token_id(self.eos_token))
        return frozenset(ids)


def _compile(template: str) -> Any:
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ConfigError(f"chat template: {message}")

    def strftime_now(fmt: str) -> str:  # Llama 3.x templates print today's date
        import datetime

        return datetime.datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        return env.from_string(template)
    except TemplateError as e:
        raise ConfigError(f"chat template does not compile: {e}") from None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON ({e})") from None
    return data if isinstance(data, dict) else {}


def _token_text(tok: Any) -> str | None:
    """``bos_token`` is a string or an AddedToken dict ``{"content": ...}``."""
    if isinstance(tok, dict):
        return tok.get("content")
    return tok if isinstance(tok, str) else None
