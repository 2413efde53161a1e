"""OpenAI-compatible request bodies, response builders' plain shapes, and error bodies.

Why pydantic models here: FastAPI validates bodies against them, so a wrong field type becomes
one 400 with an OpenAI-style ``{"error": {...}}`` body before anything reaches the engine
thread. Unknown fields are ignored (clients send ``frequency_penalty`` and friends) rather
than rejected; fields sluice adds for its scheduler (``priority``, ``slo``, ``program_id``,
``turn``, ``last_turn``, ``top_k``, ``ignore_eos``) arrive through the OpenAI client's
``extra_body`` and are validated like the rest.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator


class SLOBody(BaseModel):
    """Per-request latency objectives in milliseconds (become ``core.request.SLO``)."""

    model_config = ConfigDict(extra="forbid")
    ttft_ms: float | None = Field(default=None, gt=0)
    tpot_ms: float | None = Field(default=None, gt=0)


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


class _Common(BaseModel):
    """Fields both endpoints share: sampling, streaming and what the scheduler sees."""

    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: StrictInt | None = None
    temperature: float | None = Field(default=None, ge=0, le=100)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: StrictInt | None = Field(default=None, ge=-1)
    seed: StrictInt | None = None
    stop: str | list[str] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    n: StrictInt = 1
    user: str | None = None
    priority: StrictInt = 0
    slo: SLOBody | None = None
    program_id: StrictInt | None = None
    turn: StrictInt = Field(default=0, ge=0)
    last_turn: StrictBool = True
    ignore_eos: StrictBool = False

    @model_validator(mode="after")
    def _check(self) -> "_Common":
        if self.n != 1:
            raise ValueError("only n=1 is supported")
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        if any(not s for s in stops):
            raise ValueError("stop strings must be non-empty")
        if len(stops) > 4:
            raise ValueError("at most 4 stop strings")
        return self

    @property
    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Common):
    """``POST /v1/completions``: ``prompt`` is text or a list of token ids (as vLLM accepts)."""

    prompt: str | list[StrictInt] | list[str]
    logprobs: StrictInt | None = Field(default=None, ge=0, le=20)
    echo: StrictBool = False

    @model_validator(mode="after")
    def _one_prompt(self) -> "CompletionRequest":
        p = self.prompt
        if isinstance(p, list) and p and isinstance(p[0], str):
            if len(p) != 1:
                raise ValueError("batched prompts are not supported; send one prompt")
            self.prompt = p[0]
        if self.echo:
            raise ValueError("echo is not supported")
        return self


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatCompletionRequest(_Common):
    """``POST /v1/chat/completions``; ``max_completion_tokens`` is the newer name of
    ``max_tokens``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = None
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = Field(default=None, ge=0, le=20)

    @model_validator(mode="after")
    def _merge_max(self) -> "ChatCompletionRequest":
        if self.max_tokens is None and self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self


# -- errors --------------------------------------------------------------------------------
class APIError(Exception):
    """An error the client caused or must retry; rendered as an OpenAI error body."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = headers or {}


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape: the official client reads ``error.message`` etc."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """One readable line and the offending parameter from pydantic's error list."""
    if not errors:
        return "invalid request", None
    first = errors[0]
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid value")
    if first.get("type") == "json_invalid":
        return f"request body is not valid JSON: {first.get('ctx', {}).get('error', msg)}", None
    return (f"{param}: {msg}" if param else msg), param
