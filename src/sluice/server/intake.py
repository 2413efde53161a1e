"""Turn a validated OpenAI body into a scheduler :class:`Request`, or a 400 that says why.

Why here and not in the engine thread: every check that can fail because of the client
(unknown model, empty or over-long prompt, ``max_tokens <= 0``, token ids outside the
vocabulary, bad sampling values) happens before the request is queued, so the engine only ever
sees requests it can run, and the client gets the reason in the OpenAI error shape. The
length checks mirror the scheduler's own rejection rules (context, KV capacity, token budget).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from sluice.core.content import Content
from sluice.core.engine import Engine
from sluice.core.request import SLO, Request
from sluice.server.protocol import APIError, ChatCompletionRequest, CompletionRequest, _Common

COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's and vLLM's default for /v1/completions

SamplingFactory = Callable[..., Any]


@dataclass
class ModelInfo:
    """What intake needs to know about the served model."""

    name: str
    tokenizer: Any  # encode/decode/apply_chat_template/vocab_size (or None: token ids only)
    max_model_len: int
    make_sampling: SamplingFactory


def bad(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def check_model(info: ModelInfo, name: str) -> None:
    if name != info.name:
        raise bad(f"model {name!r} is not served here; available: {info.name!r}",
                  param="model", code="model_not_found")


def completion_prompt(info: ModelInfo, body: CompletionRequest) -> list[int]:
    """Token ids of a completion prompt (text is tokenized; ids are range-checked)."""
    p = body.prompt
    if isinstance(p, str):
        if info.tokenizer is None:
            raise bad("this model has no tokenizer; send the prompt as token ids",
                      param="prompt")
        ids = info.tokenizer.encode(p)
    else:
        ids = list(p)
        vocab = info.tokenizer.vocab_size if info.tokenizer is not None else None
        if vocab is not None and any(not 0 <= t < vocab for t in ids):
            raise bad(f"prompt token ids must be in [0, {vocab})", param="prompt")
    if not ids:
        raise bad("prompt is empty", param="prompt")
    return ids


def chat_prompt(info: ModelInfo, body: ChatCompletionRequest) -> list[int]:
    """Render the messages with the model's chat template and tokenize them."""
    if info.tokenizer is None:
        raise bad("this model has no tokenizer, so no chat template", param="messages")
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    try:
        text = info.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    except Exception as exc:  # noqa: BLE001 - a template error is the request's fault
        raise bad(f"cannot apply the chat template: {exc}", param="messages") from None
    ids = info.tokenizer.encode(text, add_special_tokens=False)
    if not ids:
        raise bad("messages render to an empty prompt", param="messages")
    return ids


def max_tokens_of(info: ModelInfo, body: _Common, prompt_len: int, default: int | None) -> int:
    """``max_tokens`` checked against the context; ``default`` None = fill the context."""
    room = info.max_model_len - prompt_len
    if room <= 0:
        raise bad(f"this model's maximum context length is {info.max_model_len} tokens; the "
                  f"prompt has {prompt_len}", param="messages" if isinstance(
                      body, ChatCompletionRequest) else "prompt", code="context_length_exceeded")
    mt = body.max_tokens
    if mt is None:
        return min(default, room) if default is not None else room
    if mt <= 0:
        raise bad(f"max_tokens must be >= 1, got {mt}", param="max_tokens")
    if prompt_len + mt > info.max_model_len:
        raise bad(f"this model's maximum context length is {info.max_model_len} tokens; you "
                  f"requested {prompt_len + mt} ({prompt_len} in the prompt, {mt} to "
                  f"generate)", param="max_tokens", code="context_length_exceeded")
    return mt


def check_fits(engine: Engine, prompt_len: int, max_tokens: int) -> None:
    """The scheduler's own rejection rules (KV capacity, token budget) as a 400 up front."""
    cfg, kv = engine.scheduler.cfg, engine.kv
    need = prompt_len + (max_tokens if cfg.kv_reservation == "max" else 1)
    if kv.blocks_for(need) > kv.num_blocks:
        raise bad(f"request needs {kv.blocks_for(need)} KV blocks, the server has "
                  f"{kv.num_blocks}", param="prompt", code="context_length_exceeded")
    if not cfg.enable_chunked_prefill and prompt_len > cfg.max_num_batched_tokens:
        raise bad(f"prompt of {prompt_len} tokens exceeds the token budget "
                  f"{cfg.max_num_batched_tokens} (chunked prefill is off)", param="prompt")


def sampling_of(info: ModelInfo, body: _Common, logprobs: bool) -> Any:
    """The executor's sampling parameters; invalid values become a 400."""
    temperature = 1.0 if body.temperature is None else body.temperature
    top_k = body.top_k if body.top_k and body.top_k > 0 else 0
    try:
        return info.make_sampling(
            temperature=temperature, top_p=1.0 if body.top_p is None else body.top_p,
            top_k=top_k, seed=body.seed, stop=body.stop_list, logprobs=logprobs,
            ignore_eos=body.ignore_eos)
    except ValueError as exc:
        raise bad(str(exc)) from None


def build_request(req_id: int, arrival: float, body: _Common, prompt: list[int],
                  max_tokens: int, sampling: Any) -> Request:
    """A scheduler request with the scheduler-visible fields of the body."""
    slo = None
    if body.slo is not None and (body.slo.ttft_ms or body.slo.tpot_ms):
        slo = SLO(ttft=body.slo.ttft_ms / 1000 if body.slo.ttft_ms else None,
                  tpot=body.slo.tpot_ms / 1000 if body.slo.tpot_ms else None)
    return Request(id=req_id, arrival=arrival, content=Content(tokens=prompt),
                   max_tokens=max_tokens, user=body.user or "default", priority=body.priority,
                   slo=slo, program=body.program_id, turn=body.turn,
                   last_turn=body.last_turn, sampling=sampling)
