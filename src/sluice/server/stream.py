"""The per-request channel from the engine thread to the HTTP handler's event loop.

Why a separate object: the engine thread must never block on a slow client, and must never
touch asyncio objects directly (they are not thread-safe). It hands events over with
``loop.call_soon_threadsafe``; the handler awaits them in order. Token ids are copied out of
``Request.content`` by the engine thread at the moment the scheduler accepted them, so the
stream carries exactly the tokens the engine produced, once each.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from sluice.core.request import Request
from sluice.server.servelog import RequestTimes


@dataclass(slots=True)
class TokenEvent:
    ids: list[int]
    logprobs: list[float] | None = None


@dataclass(slots=True)
class EndEvent:
    """``reason``: ``stop`` | ``length`` | ``abort`` | ``error`` | ``rejected``."""

    reason: str
    detail: str = ""
    prompt_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0


Event = TokenEvent | EndEvent


@dataclass(eq=False)
class RequestStream:
    """What the handler holds for one request: the request and its event queue."""

    req: Request
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    emitted: int = 0  # output tokens handed to the queue (engine thread only)
    ended: bool = False  # an EndEvent was queued (engine thread only)
    last_token_time: float = 0.0  # engine clock of the last token handed over (for ITL)
    end: EndEvent | None = None  # set by the consumer when it reads the EndEvent
    times: RequestTimes | None = None  # the request log's timeline (see servelog.py)

    def put(self, event: Event) -> None:
        """Engine thread -> event loop; a loop that is gone (client left) drops the event."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:
            pass

    async def get(self) -> Event:
        event = await self.queue.get()
        if isinstance(event, EndEvent):
            self.end = event
        return event

    @property
    def finished(self) -> bool:
        return self.end is not None
