"""Incremental detokenization with stop-string hold-back, per response.

Why this exists: a token is not a unit of text. Byte-level tokens may end inside a UTF-8
character, SentencePiece decoders change a token's leading space depending on what precedes it,
and a stop string may span tokens. OpenAI semantics say the stop string itself is never
returned, so text that could be the start of a stop string is held back until the next token
shows whether it is. Decoding uses a sliding window (``decode(ids[p:]) - decode(ids[p:k])``),
so each token costs O(window), not O(output).
"""

from __future__ import annotations

from typing import Protocol, Sequence


class Decoder(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...


class TextStream:
    """Feed token ids with :meth:`push`; it returns text that is safe to send."""

    def __init__(self, tokenizer: Decoder, stops: Sequence[str] = ()) -> None:
        self.tok = tokenizer
        self.stops = tuple(stops)
        self.ids: list[int] = []
        self.text = ""  # all text decoded so far (complete characters only)
        self.sent = 0  # characters of ``text`` already returned
        self.stopped = False
        self._prefix = 0  # window start
        self._read = 0  # ids whose text is in ``self.text``

    def push(self, ids: Sequence[int]) -> str:
        if self.stopped:
            return ""
        self.ids.extend(ids)
        prefix_text = self.tok.decode(self.ids[self._prefix:self._read])
        full = self.tok.decode(self.ids[self._prefix:])
        if full.endswith("\ufffd") or len(full) < len(prefix_text):
            return ""  # an incomplete character: wait for the next token
        self.text += full[len(prefix_text):]
        self._prefix, self._read = self._read, len(self.ids)
        return self._release()

    def finish(self) -> str:
        """The rest of the text at the end of the response (stop string cut off)."""
        if not self.stopped and self._read < len(self.ids):
            tail = self.tok.decode(self.ids[self._prefix:])
            head = self.tok.decode(self.ids[self._prefix:self._read])
            self.text += tail[len(head):].rstrip("\ufffd")
            self._read = len(self.ids)
        out = self._release(final=True)
        return out

    def _release(self, final: bool = False) -> str:
        if self.stopped:
            return ""
        end = len(self.text)
        cut = self._find_stop()
        if cut is not None:
            self.stopped = True
            end = cut
        elif not final:
            end -= self._holdback()
        if end <= self.sent:
            return ""
        out = self.text[self.sent:end]
        self.sent = end
        return out

    def _find_stop(self) -> int | None:
        """Earliest stop-string match that starts at or after what was not yet sent."""
        if not self.stops:
            return None
        window = max(len(s) for s in self.stops)
        start = max(0, self.sent - window)
        hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        return min(hits) if hits else None

    def _holdback(self) -> int:
        """Chars at the end of the text that might begin a stop string."""
        best = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:k]):
                    best = k
                    break
        return best
