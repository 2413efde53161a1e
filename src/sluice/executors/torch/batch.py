"""Flatten a StepPlan's chunks into one batch of rows, validating the plan on the way.

Every token of every chunk becomes one row, so a single forward covers prefill chunks and decode
tokens together. Each chunk runs a range of layers ``[start_layer, end_layer)``: a resumed
interrupted prefill joins at the layer it reached, a layered-prefill chunk (``until_layer``)
leaves early. :meth:`StepBatch.active` gives, for a layer, the rows and attention metadata of the
chunks that run it (all of them in the common case: one cached object for the whole step).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sluice.core.plan import Chunk
from sluice.executors.torch.attention import AttentionMeta, SeqSpan, build_meta


@dataclass(slots=True)
class StepBatch:
    chunks: list[Chunk]
    spans: list[SeqSpan]
    skips: list[int]  # layer each chunk starts at
    ends: list[int]  # layer each chunk stops before
    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    sample_chunks: list[int]  # chunk indices that complete their request (sample a token)
    block_size: int
    device: torch.device
    use_flash: bool
    _metas: dict[tuple[int, ...], tuple[torch.Tensor | None, AttentionMeta]] = field(
        default_factory=dict)

    @property
    def num_rows(self) -> int:
        return int(self.input_ids.shape[0])

    def rows_of(self, i: int) -> slice:
        s = self.spans[i]
        return slice(s.row, s.row + s.n)

    def sample_rows(self) -> torch.Tensor:
        """Row of the last token of each sampling chunk."""
        last = [self.spans[i].row + self.spans[i].n - 1 for i in self.sample_chunks]
        return torch.tensor(last, dtype=torch.long, device=self.device)

    def active(self, layer: int) -> tuple[torch.Tensor | None, AttentionMeta]:
        """``(rows, meta)`` for the chunks that run ``layer``; ``rows`` is None for all rows,
        ``meta`` None when no chunk runs it."""
        members = tuple(i for i, (s, e) in enumerate(zip(self.skips, self.ends)) if s <= layer < e)
        if not members:
            return None, None
        if members not in self._metas:
            self._metas[members] = self._subset(members)
        return self._metas[members]

    def _subset(self, members: tuple[int, ...]) -> tuple[torch.Tensor | None, AttentionMeta]:
        if len(members) == len(self.spans):
            return None, build_meta(self.spans, self.block_size, self.device, self.use_flash)
        spans, rows, row = [], [], 0
        for i in members:
            s = self.spans[i]
            spans.append(SeqSpan(row, s.start, s.n, s.blocks))
            rows.extend(range(s.row, s.row + s.n))
            row += s.n
        meta = build_meta(spans, self.block_size, self.device, self.use_flash)
        return torch.tensor(rows, dtype=torch.long, device=self.device), meta


def build_batch(chunks: list[Chunk], skips: list[int], ends: list[int], num_layers: int,
                block_size: int, num_blocks: int, vocab_size: int, device: torch.device,
                use_flash: bool = False) -> StepBatch:
    """Validate the chunks against the executor's cache and flatten them. Only chunks that
    run the last layer and complete their request's tokens sample."""
    spans: list[SeqSpan] = []
    ids: list[int] = []
    pos: list[int] = []
    sample: list[int] = []
    seen: set[int] = set()
    for i, c in enumerate(chunks):
        _validate(c, block_size, num_blocks, seen)
        spans.append(SeqSpan(len(ids), c.start, c.n_tokens, c.req.blocks))
        toks = c.req.content.tokens[c.start:c.start + c.n_tokens]
        if min(toks) < 0 or max(toks) >= vocab_size:
            raise ValueError(f"plan chunk of request {c.req.id}: token ids must be in "
                             f"0..{vocab_size - 1}, got {min(toks)}..{max(toks)}")
        ids.extend(toks)
        pos.extend(range(c.start, c.start + c.n_tokens))
        if c.start + c.n_tokens == c.req.num_tokens and ends[i] == num_layers:
            sample.append(i)
    return StepBatch(
        chunks=chunks, spans=spans, skips=skips, ends=ends,
        input_ids=torch.tensor(ids, dtype=torch.long, device=device),
        positions=torch.tensor(pos, dtype=torch.long, device=device),
        sample_chunks=sample, block_size=block_size, device=device, use_flash=use_flash)


def _validate(c: Chunk, block_size: int, num_blocks: int, seen: set[int]) -> None:
    req = c.req
    where = f"plan chunk of request {req.id}"
    if req.id in seen:
        raise ValueError(f"{where}: request appears twice in one step")
    seen.add(req.id)
    tokens = req.content.tokens
    if tokens is None:
        raise ValueError(f"{where}: the torch executor needs real token ids, not segments")
    if c.n_tokens < 1 or c.start < 0 or c.start + c.n_tokens > len(tokens):
        raise ValueError(f"{where}: tokens {c.start}..{c.start + c.n_tokens - 1} outside the "
                         f"{len(tokens)} tokens it has")
    need = (c.start + c.n_tokens + block_size - 1) // block_size
    if len(req.blocks) < need:
        raise ValueError(f"{where}: {len(req.blocks)} blocks cannot hold "
                         f"{c.start + c.n_tokens} tokens (block size {block_size})")
    bad = [b for b in req.blocks[:need] if not 0 <= b < num_blocks]
    if bad:
        raise ValueError(f"{where}: block ids {bad[:5]} outside 0..{num_blocks - 1}")
