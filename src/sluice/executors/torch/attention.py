"""Paged attention over a KV cache laid out as ``[num_blocks, block_size, kv_heads, head_dim]``.

The scheduler's KV manager hands each request a block table; token at position ``p`` lives in
slot ``blocks[p // block_size] * block_size + p % block_size`` of the flattened cache. A step's
metadata (:class:`AttentionMeta`) turns the batch's block tables into slot indices once, and
every layer reuses it.

Kernels: with ``flash_attn`` installed on CUDA (and a block size it supports) one varlen call
reads the paged cache directly. Otherwise torch SDPA: all single-token queries (decode) share one
padded, masked call; each multi-token chunk (prefill) gets its own call with a causal mask offset
by the tokens already cached. Grouping this way keeps padding waste at zero for prefill and
the call count at one for decode, whatever the mix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

try:  # optional CUDA kernel
    from flash_attn import flash_attn_varlen_func  # type: ignore[import-not-found]
except Exception:  # noqa: BLE001 - any import failure means "not available"
    flash_attn_varlen_func = None

FLASH_BLOCK_MULTIPLE = 256  # flash-attn's paged KV needs page sizes divisible by this


@dataclass(slots=True)
class SeqSpan:
    """One sequence of the flattened batch: rows ``row .. row+n-1`` hold positions
    ``start .. start+n-1``; keys are positions ``0 .. start+n-1`` found through ``blocks``."""

    row: int
    start: int
    n: int
    blocks: list[int]


@dataclass(slots=True)
class PrefillPart:
    row: int
    n: int
    ctx: int
    table: torch.Tensor  # [blocks] block ids holding positions 0..ctx-1
    mask: torch.Tensor | None  # [n, ctx] bool, None when start == 0 (plain causal)


@dataclass(slots=True)
class AttentionMeta:
    """Slot indices for one step (or one subset of it, when chunks resume at later layers)."""

    slot_mapping: torch.Tensor  # [T] where each new token's K/V is written
    decode_rows: torch.Tensor | None = None  # [B] rows of single-token sequences
    decode_table: torch.Tensor | None = None  # [B, max_blocks] block ids (0-padded)
    decode_mask: torch.Tensor | None = None  # [B, 1, 1, max_blocks * block_size]
    prefills: list[PrefillPart] = field(default_factory=list)
    flash: dict | None = None  # arguments for flash_attn_varlen_func


def flash_usable(device: torch.device, dtype: torch.dtype, block_size: int) -> bool:
    """Whether the flash-attn varlen kernel can serve this cache."""
    return (flash_attn_varlen_func is not None and device.type == "cuda"
            and dtype in (torch.float16, torch.bfloat16)
            and block_size % FLASH_BLOCK_MULTIPLE == 0)


def build_meta(spans: list[SeqSpan], block_size: int, device: torch.device,
               use_flash: bool = False) -> AttentionMeta:
    """Precompute slot indices and masks for ``spans`` (rows must be contiguous from 0)."""
    new_slots = torch.cat([_slots(s.blocks, s.start, s.start + s.n, block_size) for s in spans])
    meta = AttentionMeta(slot_mapping=new_slots.to(device))
    if use_flash:
        meta.flash = _flash_args(spans, device)
        return meta
    decodes = [s for s in spans if s.n == 1]
    if decodes:
        _decode_meta(meta, decodes, block_size, device)
    for s in spans:
        if s.n > 1:
            meta.prefills.append(_prefill_part(s, block_size, device))
    return meta


def _slots(blocks: list[int], lo: int, hi: int, block_size: int) -> torch.Tensor:
    """Cache slots of positions ``lo .. hi-1`` (CPU, int64)."""
    pos = torch.arange(lo, hi)
    table = torch.tensor(blocks[:(hi + block_size - 1) // block_size], dtype=torch.long)
    return table[pos // block_size] * block_size + pos % block_size


def _decode_meta(meta: AttentionMeta, decodes: list[SeqSpan], block_size: int,
                 device: torch.device) -> None:
    """Whole blocks are gathered (one index per block, not per token) and the padding past
    each sequence's context is masked."""
    ctxs = [s.start + 1 for s in decodes]
    n_blocks = (max(ctxs) + block_size - 1) // block_size
    table = torch.zeros(len(decodes), n_blocks, dtype=torch.long)
    for i, s in enumerate(decodes):
        used = (ctxs[i] + block_size - 1) // block_size
        table[i, :used] = torch.tensor(s.blocks[:used], dtype=torch.long)
    pos = torch.arange(n_blocks * block_size)
    mask = pos[None, :] < torch.tensor(ctxs)[:, None]
    meta.decode_rows = torch.tensor([s.row for s in decodes], dtype=torch.long, device=device)
    meta.decode_table = table.to(device)
    meta.decode_mask = mask[:, None, None, :].to(device)


def _prefill_part(s: SeqSpan, block_size: int, device: torch.device) -> PrefillPart:
    ctx = s.start + s.n
    used = (ctx + block_size - 1) // block_size
    table = torch.tensor(s.blocks[:used], dtype=torch.long, device=device)
    mask = None
    if s.start > 0:
        q_pos = torch.arange(s.start, ctx, device=device)
        mask = torch.arange(ctx, device=device)[None, :] <= q_pos[:, None]
    return PrefillPart(s.row, s.n, ctx, table, mask)


def _flash_args(spans: list[SeqSpan], device: torch.device) -> dict:
    q_lens = [s.n for s in spans]
    k_lens = [s.start + s.n for s in spans]
    width = max(len(s.blocks) for s in spans)
    table = torch.zeros(len(spans), width, dtype=torch.int32)
    for i, s in enumerate(spans):
        table[i, :len(s.blocks)] = torch.tensor(s.blocks, dtype=torch.int32)

    def cu(lens: list[int]) -> torch.Tensor:
        return torch.tensor([0] + lens, dtype=torch.int32).cumsum(0, dtype=torch.int32).to(device)

    return {"cu_seqlens_q": cu(q_lens), "cu_seqlens_k": cu(k_lens), "max_seqlen_q": max(q_lens),
            "max_seqlen_k": max(k_lens), "block_table": table.to(device)}


def write_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             meta: AttentionMeta) -> None:
    """Store this step's keys/values (``[T, kv_heads, head_dim]``) in their slots."""
    flat_k = k_cache.view(-1, *k_cache.shape[2:])
    flat_v = v_cache.view(-1, *v_cache.shape[2:])
    flat_k.index_copy_(0, meta.slot_mapping, k.to(flat_k.dtype))
    flat_v.index_copy_(0, meta.slot_mapping, v.to(flat_v.dtype))


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    meta: AttentionMeta, scale: float) -> torch.Tensor:
    """Attention of queries ``[T, heads, head_dim]`` over the cached keys of their sequences
    (this step's K/V must already be written). Returns ``[T, heads, head_dim]``."""
    if meta.flash is not None:
        return flash_attn_varlen_func(q, k_cache, v_cache, softmax_scale=scale, causal=True,
                                      **meta.flash)
    out = torch.empty_like(q)
    if meta.decode_rows is not None:
        b, heads, dim = len(meta.decode_rows), q.shape[1], q.shape[2]
        kv_heads = k_cache.shape[2]
        # Fold each GQA group into the query axis: one [G, ctx] problem per KV head, no
        # repeated keys (measurably faster than enable_gqa on CPU).
        qd = q.index_select(0, meta.decode_rows).view(b, kv_heads, heads // kv_heads, dim)
        kd = _gather(k_cache, meta.decode_table).transpose(1, 2)  # [B, KVH, ctx, D]
        vd = _gather(v_cache, meta.decode_table).transpose(1, 2)
        od = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=meta.decode_mask, scale=scale)
        out.index_copy_(0, meta.decode_rows, od.reshape(b, heads, dim))
    for p in meta.prefills:
        # 4-D inputs: torch's fused CPU kernel only takes batched [B, H, L, D] tensors.
        qp = q[p.row:p.row + p.n].transpose(0, 1)[None]  # [1, H, n, D]
        kp = _gather(k_cache, p.table)[:p.ctx].transpose(0, 1)[None]  # [1, KVH, ctx, D]
        vp = _gather(v_cache, p.table)[:p.ctx].transpose(0, 1)[None]
        op = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=p.mask, is_causal=p.mask is None,
                                            scale=scale, enable_gqa=True)
        out[p.row:p.row + p.n] = op[0].transpose(0, 1)
    return out


def _gather(cache: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Blocks ``table`` (``[..., blocks]``) of a layer cache as ``[..., blocks * bs, KVH, D]``."""
    blocks = cache[table]  # [..., blocks, bs, KVH, D]
    return blocks.flatten(-4, -3)
