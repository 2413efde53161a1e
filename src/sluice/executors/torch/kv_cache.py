"""The KV cache tensors: device blocks for attention and a host tier for swap preemption.

The core KV manager decides *which* block ids a request owns and when it is swapped; this file
only moves bytes. One allocation ``[2, layers, blocks, block_size, kv_heads, head_dim]`` holds
keys and values of every layer, so a swap of ``n`` blocks is one gather and one scatter over all
layers instead of ``2 * layers`` small copies. The host pool is preallocated (pinned on CUDA) so
swapping never allocates and its capacity is a fixed, visible number.
"""

from __future__ import annotations

from typing import Any

import torch


class PagedKVCache:
    """Device KV blocks plus a host pool keyed by request id for swapped-out KV."""

    def __init__(self, num_layers: int, num_blocks: int, block_size: int, kv_heads: int,
                 head_dim: int, dtype: torch.dtype, device: torch.device,
                 num_host_blocks: int = 0) -> None:
        for name, v in (("num_blocks", num_blocks), ("block_size", block_size)):
            if v < 1:
                raise ValueError(f"KV cache {name} must be >= 1, got {v}")
        if num_host_blocks < 0:
            raise ValueError(f"KV cache num_host_blocks must be >= 0, got {num_host_blocks}")
        shape = (2, num_layers, num_blocks, block_size, kv_heads, head_dim)
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.data = torch.zeros(shape, dtype=dtype, device=device)
        host_shape = (2, num_layers, num_host_blocks, block_size, kv_heads, head_dim)
        pin = device.type == "cuda"
        self.host = torch.zeros(host_shape, dtype=dtype, pin_memory=pin)
        self._free_host = list(range(num_host_blocks - 1, -1, -1))
        self._swapped: dict[int, list[int]] = {}
        self._owners: dict[int, Any] = {}

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Key and value cache of layer ``i``: ``[num_blocks, block_size, kv_heads, head_dim]``."""
        return self.data[0, i], self.data[1, i]

    @property
    def free_host_blocks(self) -> int:
        return len(self._free_host)

    def is_swapped(self, key: int) -> bool:
        return key in self._swapped

    def swap_out(self, key: int, block_ids: list[int], owner: Any = None) -> None:
        """Copy device blocks to the host under ``key``; the device ids are free afterwards.
        ``owner`` (a Request) lets a full host pool reclaim copies of requests that ended
        while swapped (aborted) and were never :meth:`drop`-ped."""
        if key in self._swapped:
            raise ValueError(f"swap-out of request {key}: its KV is already on the host")
        self._check_ids(block_ids, f"swap-out of request {key}")
        if len(block_ids) > len(self._free_host):
            self._reclaim_ended()
        if len(block_ids) > len(self._free_host):
            raise ValueError(f"swap-out of request {key}: needs {len(block_ids)} host blocks, "
                             f"{len(self._free_host)} free (raise num_host_blocks)")
        host_ids = [self._free_host.pop() for _ in block_ids]
        src = self.data[:, :, torch.tensor(block_ids, device=self.data.device)]
        self.host[:, :, torch.tensor(host_ids)] = src.to("cpu")
        self._swapped[key] = host_ids
        if owner is not None:
            self._owners[key] = owner

    def swap_in(self, key: int, block_ids: list[int]) -> None:
        """Copy the host KV of ``key`` into ``block_ids`` (same count) and free the host copy."""
        host_ids = self._swapped.get(key)
        if host_ids is None:
            raise ValueError(f"swap-in of request {key}: no KV of it on the host")
        self._check_ids(block_ids, f"swap-in of request {key}")
        if len(block_ids) != len(host_ids):
            raise ValueError(f"swap-in of request {key}: {len(block_ids)} device blocks for "
                             f"{len(host_ids)} swapped blocks")
        src = self.host[:, :, torch.tensor(host_ids)]
        dst = torch.tensor(block_ids, device=self.data.device)
        self.data[:, :, dst] = src.to(self.data.device, non_blocking=True)
        self.drop(key)

    def drop(self, key: int) -> None:
        """Forget the host copy of ``key`` (request aborted while swapped); no-op if none."""
        self._owners.pop(key, None)
        for h in reversed(self._swapped.pop(key, [])):
            self._free_host.append(h)

    def _reclaim_ended(self) -> None:
        for key in [k for k, r in self._owners.items() if getattr(r, "is_finished", False)]:
            self.drop(key)

    def _check_ids(self, block_ids: list[int], what: str) -> None:
        bad = [b for b in block_ids if not 0 <= b < self.num_blocks]
        if bad:
            raise ValueError(f"{what}: block ids {bad[:5]} outside 0..{self.num_blocks - 1}")
        if len(set(block_ids)) != len(block_ids):
            raise ValueError(f"{what}: duplicate block ids in {block_ids}")
