"""OpenAI response and stream-chunk bodies for completions and chat completions.

Why one builder per shape: the official client parses these strictly (``object``, ``choices``,
``delta``, ``usage``), and streaming and non-streaming must agree field by field; keeping the
shapes here keeps the handlers about control flow only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from sluice.server.stream import EndEvent


@dataclass
class Output:
    """What one request produced, accumulated from its stream."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    end: EndEvent | None = None


def finish_reason(end: EndEvent | None) -> str | None:
    return None if end is None else end.reason


def usage(end: EndEvent) -> dict[str, Any]:
    return {"prompt_tokens": end.prompt_tokens, "completion_tokens": end.output_tokens,
            "total_tokens": end.prompt_tokens + end.output_tokens,
            "prompt_tokens_details": {"cached_tokens": end.cached_tokens}}


def token_strings(tokenizer: Any, ids: list[int]) -> list[str]:
    return [tokenizer.decode([t], skip_special_tokens=False) for t in ids]


def completion_logprobs(tokenizer: Any, ids: list[int], lps: list[float],
                        offset: int = 0) -> dict[str, Any]:
    toks = token_strings(tokenizer, ids)
    offsets, pos = [], offset
    for t in toks:
        offsets.append(pos)
        pos += len(t)
    return {"tokens": toks, "token_logprobs": list(lps[:len(toks)]), "top_logprobs": None,
            "text_offset": offsets}


def chat_logprobs(tokenizer: Any, ids: list[int], lps: list[float]) -> dict[str, Any]:
    toks = token_strings(tokenizer, ids)
    return {"content": [{"token": t, "logprob": lp, "bytes": list(t.encode()),
                         "top_logprobs": []} for t, lp in zip(toks, lps)]}


def completion_body(rid: str, model: str, out: Output, logprobs: dict | None) -> dict:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": out.text, "logprobs": logprobs,
                         "finish_reason": finish_reason(out.end)}],
            "usage": usage(out.end)}


def chat_body(rid: str, model: str, out: Output, logprobs: dict | None) -> dict:
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": out.text},
                         "logprobs": logprobs, "finish_reason": finish_reason(out.end)}],
            "usage": usage(out.end)}


def completion_chunk(rid: str, model: str, text: str, finish: str | None,
                     logprobs: dict | None = None) -> dict:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": logprobs,
                         "finish_reason": finish}]}


def chat_chunk(rid: str, model: str, delta: dict, finish: str | None,
               logprobs: dict | None = None) -> dict:
    return {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "delta": delta, "logprobs": logprobs,
                                         "finish_reason": finish}]}


def usage_chunk(rid: str, model: str, obj: str, end: EndEvent) -> dict:
    """The final chunk of ``stream_options.include_usage``: no choices, only usage."""
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model,
            "choices": [], "usage": usage(end)}
