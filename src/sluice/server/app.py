"""The FastAPI app: OpenAI-compatible endpoints, health and Prometheus metrics.

Why handlers stay thin: validation lives in :mod:`protocol` and :mod:`intake`, response shapes
in :mod:`responses`, and the engine behind :class:`EngineRuntime`. A handler turns the body into
a request, submits it, and relays its stream - as SSE or as one JSON body. Every way out of a
handler (done, client gone, cancelled by shutdown) ends with the request finished or aborted,
so no KV block outlives its client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request as HTTPRequest

from sluice.server import intake, responses
from sluice.server.intake import ModelInfo
from sluice.server.protocol import (APIError, ChatCompletionRequest, CompletionRequest,
                                    error_body, validation_message)
from sluice.server.runtime import Draining, EngineRuntime, QueueFull
from sluice.server.servelog import LoopProbe
from sluice.server.stream import RequestStream, TokenEvent
from sluice.server.textstream import TextStream

log = logging.getLogger("sluice.server")
DISCONNECT_POLL_S = 0.25


def create_app(runtime: EngineRuntime, info: ModelInfo, drain_timeout: float = 30.0,
               describe: Callable[[], dict[str, Any]] | None = None) -> FastAPI:
    """An app serving ``info.name`` through ``runtime``; the runtime starts and drains with
    the app's lifespan (uvicorn runs the shutdown half on SIGTERM). ``describe`` feeds
    ``GET /sluice/config`` (the deployment, for ``sluice bench --twin``)."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        runtime.start()
        probe = LoopProbe(asyncio.get_running_loop(), runtime.now, runtime.servelog)
        probe.start()
        try:
            yield
        finally:
            probe.stop()
            await asyncio.to_thread(runtime.shutdown, True, drain_timeout)

    app = FastAPI(title="sluice", lifespan=lifespan)
    app.add_middleware(_StampReceived, clock=runtime.now)
    app.state.runtime = runtime
    app.state.info = info
    _install_error_handlers(app)

    @app.get("/health")
    async def health() -> JSONResponse:
        if runtime.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": info.name, "object": "model", "created": 0,
                                            "owned_by": "sluice",
                                            "max_model_len": info.max_model_len}]}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        text = runtime.metrics.render(runtime.snapshot)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/sluice/config")
    async def config() -> dict[str, Any]:
        if describe is None:
            raise APIError(404, "this server does not describe its deployment",
                           type_="not_found_error")
        return describe()

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, http: HTTPRequest) -> Any:
        arrival = runtime.now()
        intake.check_model(info, body.model)
        prompt = intake.completion_prompt(info, body)
        mt = intake.max_tokens_of(info, body, len(prompt), intake.COMPLETION_DEFAULT_MAX_TOKENS)
        return await _serve(runtime, info, http, body, prompt, mt, arrival, chat=False,
                            want_logprobs=body.logprobs is not None)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, http: HTTPRequest) -> Any:
        arrival = runtime.now()
        intake.check_model(info, body.model)
        prompt = intake.chat_prompt(info, body)
        mt = intake.max_tokens_of(info, body, len(prompt), None)
        return await _serve(runtime, info, http, body, prompt, mt, arrival, chat=True,
                            want_logprobs=body.logprobs)

    return app


async def _serve(runtime: EngineRuntime, info: ModelInfo, http: HTTPRequest, body: Any,
                 prompt: list[int], max_tokens: int, arrival: float, chat: bool,
                 want_logprobs: bool) -> Any:
    intake.check_fits(runtime.engine, len(prompt), max_tokens)
    sampling = intake.sampling_of(info, body, want_logprobs)
    req = intake.build_request(runtime.next_id(), arrival, body, prompt, max_tokens, sampling)
    try:
        stream = runtime.submit(req, http.scope.get(RECEIVED_KEY))
    except QueueFull as exc:
        raise APIError(429, str(exc), type_="rate_limit_error", code="queue_full",
                       headers={"Retry-After": str(exc.retry_after)}) from None
    except Draining:
        raise APIError(503, "the server is shutting down", type_="service_unavailable",
                       code="draining") from None
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{req.id}"
    text = TextStream(info.tokenizer, body.stop_list)
    if body.stream:
        events = _sse(runtime, info, stream, text, rid, chat, want_logprobs, body.include_usage)
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    return await _collect(runtime, info, http, stream, text, rid, chat, want_logprobs)


# -- non-streaming ---------------------------------------------------------------------------
async def _read_all(stream: RequestStream, text: TextStream) -> responses.Output:
    out = responses.Output()
    while True:
        ev = await stream.get()
        if not isinstance(ev, TokenEvent):
            break
        out.text += text.push(ev.ids)
        out.token_ids += ev.ids
        if ev.logprobs:
            out.logprobs += ev.logprobs
    out.text += text.finish()
    out.end = stream.end
    return out


async def _collect(runtime: EngineRuntime, info: ModelInfo, http: HTTPRequest,
                   stream: RequestStream, text: TextStream, rid: str, chat: bool,
                   want_logprobs: bool) -> JSONResponse:
    """Wait for the whole output, aborting the request if the client goes away meanwhile."""
    task = asyncio.ensure_future(_read_all(stream, text))
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if not task.done() and await http.is_disconnected():
                runtime.abort(stream)
        out = task.result()
    finally:
        if not stream.finished:
            runtime.abort(stream)
            task.cancel()
        _stamp_sent(runtime, stream, last=True)  # the body is built next; near enough
        runtime.write_request_log(stream, streamed=False)
    _raise_for_end(out.end.reason, out.end.detail)
    lp = None
    if want_logprobs:
        lp = (responses.chat_logprobs(info.tokenizer, out.token_ids, out.logprobs) if chat else
              responses.completion_logprobs(info.tokenizer, out.token_ids, out.logprobs))
    build = responses.chat_body if chat else responses.completion_body
    return JSONResponse(build(rid, info.name, out, lp))


def _raise_for_end(reason: str, detail: str) -> None:
    if reason == "rejected":
        raise APIError(400, f"request rejected by the scheduler ({detail})",
                       code=f"rejected_{detail}")
    if reason == "error":
        raise APIError(500, f"the engine failed while running this request ({detail})",
                       type_="server_error", code="engine_error")
    if reason == "abort":
        raise APIError(503, f"request aborted ({detail})", type_="service_unavailable",
                       code="aborted")


# -- streaming -------------------------------------------------------------------------------
def _sse_line(obj: dict) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


async def _sse(runtime: EngineRuntime, info: ModelInfo, stream: RequestStream,
               text: TextStream, rid: str, chat: bool, want_logprobs: bool,
               include_usage: bool) -> AsyncIterator[str]:
    """SSE events; if the client disconnects, the task is cancelled and ``finally`` aborts."""
    name = info.name
    offset = 0
    try:
        if chat:
            yield _sse_line(responses.chat_chunk(rid, name, {"role": "assistant",
                                                             "content": ""}, None))
        while True:
            ev = await stream.get()
            if not isinstance(ev, TokenEvent):
                break
            piece = text.push(ev.ids)
            lp = None
            if want_logprobs and ev.logprobs:
                lp = (responses.chat_logprobs(info.tokenizer, ev.ids, ev.logprobs) if chat else
                      responses.completion_logprobs(info.tokenizer, ev.ids, ev.logprobs,
                                                    offset))
            offset += len(piece)
            if piece or lp:
                yield _sse_line(_delta(rid, name, chat, piece, None, lp))
                if piece:
                    _stamp_sent(runtime, stream, last=False)
        end = stream.end
        if end.reason in ("rejected", "error"):
            yield _sse_line(error_body(f"request ended: {end.reason} ({end.detail})",
                                       "server_error", code=end.reason))
        else:
            yield _sse_line(_delta(rid, name, chat, text.finish(), end.reason, None))
            if include_usage:
                obj = "chat.completion.chunk" if chat else "text_completion"
                yield _sse_line(responses.usage_chunk(rid, name, obj, end))
        yield "data: [DONE]\n\n"
        _stamp_sent(runtime, stream, last=True)
    finally:
        if not stream.finished:
            runtime.abort(stream)
        runtime.write_request_log(stream, streamed=True)


def _stamp_sent(runtime: EngineRuntime, stream: RequestStream, last: bool) -> None:
    """Request log: the first content chunk / the end of the response left the handler (the
    code after a ``yield`` runs once the transport took the chunk)."""
    t = stream.times
    if t is None:
        return
    now = runtime.now()
    if math.isnan(t.first_sent):
        t.first_sent = now
    if last:
        t.last_sent = now


RECEIVED_KEY = "sluice.received"


class _StampReceived:
    """ASGI middleware: the engine-clock time a request reached the app, before its body is
    read and validated, kept in the ASGI scope for the request log."""

    def __init__(self, app: Any, clock: Callable[[], float]) -> None:
        self.app = app
        self.clock = clock

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope[RECEIVED_KEY] = self.clock()
        await self.app(scope, receive, send)


def _delta(rid: str, name: str, chat: bool, piece: str, finish: str | None,
           lp: dict | None) -> dict:
    if chat:
        return responses.chat_chunk(rid, name, {"content": piece} if piece or not finish
                                    else {}, finish, lp)
    return responses.completion_chunk(rid, name, piece, finish, lp)


# -- errors ----------------------------------------------------------------------------------
def _install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as ``{"error": {message, type, param, code}}``."""

    @app.exception_handler(APIError)
    async def api_error(_req: HTTPRequest, exc: APIError) -> JSONResponse:
        return JSONResponse(error_body(exc.message, exc.type, exc.param, exc.code),
                            status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_req: HTTPRequest, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(list(exc.errors()))
        return JSONResponse(error_body(message, param=param, code="invalid_value"),
                            status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_req: HTTPRequest, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def crash(_req: HTTPRequest, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in a request handler")
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}",
                                       "server_error"), status_code=500)
