"""Segment-key spaces for virtual content, so workloads never collide on a prefix by accident.

Why: two requests share KV blocks exactly when their virtual token sequences agree
(:mod:`sluice.core.content`). A trace's block ids (Mooncake ``hash_ids``) must map to keys that
no per-request unique segment can ever equal, and agent programs mint fresh keys for tool
outputs and instructions. Negative keys are reserved for the simulator's generated output
(``Request.output_key``), so every key here is positive.
"""

from __future__ import annotations

HASH_BASE = 1  # trace block id h -> key h + HASH_BASE (ids are >= 0 in every known trace)
UNIQUE_BASE = 1 << 40  # per-request unique prompt of a length-only trace: UNIQUE_BASE + id
MINT_BASE = 1 << 41  # keys minted by generators (agents, shared-prefix specs)


class KeyMinter:
    """Hands out fresh positive segment keys; restart it to replay the same workload."""

    __slots__ = ("_next",)

    def __init__(self, base: int = MINT_BASE) -> None:
        self._next = base

    def __call__(self) -> int:
        key = self._next
        self._next += 1
        return key


def hash_key(block_id: int) -> int:
    """Key of a trace's prefix-block id (Mooncake ``hash_ids``)."""
    return block_id + HASH_BASE


def unique_key(request_id: int) -> int:
    """Key of the private prompt of request ``request_id`` (length-only traces)."""
    return UNIQUE_BASE + request_id
