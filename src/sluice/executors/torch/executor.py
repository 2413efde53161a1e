"""TorchExecutor: runs a StepPlan on a real model over the paged KV cache.

Per step: swap-out, swap-in, one forward over all chunks (flattened), sample a token for every
chunk that completes its request, detect EOS / stop tokens / stop strings, measure the time.
Prefill can stop at a layer boundary when ``plan.interruptible`` and :attr:`interrupt` is set:
the finished layers' KV stays in the cache and the prefill chunks' hidden states are kept, so
the resumed chunk (``skip_layers == L``) continues at layer ``L``. A layered-prefill chunk
(``until_layer``, a policy's choice) stops the same way at its own boundary while the rest of
the batch runs on. The scheduler owns all bookkeeping (num_computed, appending sampled tokens);
this class only computes.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from sluice.core.plan import Chunk, StepPlan, StepResult, step_line
from sluice.core.request import Request
from sluice.errors import ConfigError
from sluice.executors.torch.attention import flash_usable
from sluice.executors.torch.batch import StepBatch, build_batch
from sluice.executors.torch.kv_cache import PagedKVCache
from sluice.executors.torch.loader import load_model, parse_device, parse_dtype
from sluice.executors.torch.rope import Rope
from sluice.executors.torch.sampling import GREEDY, SamplingParams, chosen_logprobs, sample_rows
from sluice.executors.torch.tokenizer import Tokenizer


@dataclass(slots=True)
class _Saved:
    """Hidden states of an interrupted prefill chunk after ``layers`` layers."""

    req: Request
    start: int
    n_tokens: int
    layers: int
    hidden: torch.Tensor


class TorchExecutor:
    """Executes plans on a Hugging Face Llama-family checkpoint in ``model_dir``.

    ``interrupt`` is set by the runtime when a request arrives. The executor clears it when a
    step starts (only arrivals *during* a step may cut it) and when it honours it. Sampled EOS
    / stop tokens are returned in ``sampled`` like any token and their request id in
    ``finished``; trimming a stop string from the text is the caller's job.
    """

    def __init__(self, model_dir: str | Path, device: str = "cpu", dtype: str = "float32",
                 num_gpu_blocks: int = 512, block_size: int = 16, num_host_blocks: int = 0,
                 seed: int = 0, step_log: str | Path | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.device = parse_device(device)
        self.dtype = parse_dtype(dtype)
        self.model, self.config = load_model(model_dir, self.device, self.dtype)
        has_tokenizer = (self.model_dir / "tokenizer.json").is_file()
        self.tokenizer = Tokenizer(model_dir) if has_tokenizer else None
        eos = set(self.config.eos_token_ids)
        if self.tokenizer is not None:
            eos |= self.tokenizer.eos_token_ids
        self.eos_token_ids = frozenset(eos)
        self.block_size = block_size
        self.kv = PagedKVCache(self.config.num_layers, num_gpu_blocks, block_size,
                               self.config.num_kv_heads, self.config.head_dim, self.dtype,
                               self.device, num_host_blocks)
        self.rope = Rope(self.config, self.device)
        self.use_flash = flash_usable(self.device, self.dtype, block_size)
        self.seed = seed
        self.interrupt = threading.Event()  # set by the runtime when a request arrives
        self._saved: dict[int, _Saved] = {}
        self._log = _open_log(step_log) if step_log else None

    @property
    def num_layers(self) -> int:
        return self.config.num_layers

    @property
    def max_model_len(self) -> int:
        return self.config.max_position

    def release(self, req_id: int) -> None:
        """Forget everything kept for a request that left (aborted, finished, dropped)."""
        self._saved.pop(req_id, None)
        self.kv.drop(req_id)

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- the step -----------------------------------------------------------------------
    def execute(self, plan: StepPlan) -> StepResult:
        t0 = time.perf_counter()
        self.interrupt.clear()  # only arrivals during this step may interrupt it
        for req, ids in plan.swap_out:
            self.kv.swap_out(req.id, ids, owner=req)
        for req, ids in plan.swap_in:
            self.kv.swap_in(req.id, ids)
        chunks = plan.all_chunks()
        result = self._forward(plan, chunks) if chunks else StepResult(0.0, sampled={})
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        result.duration = time.perf_counter() - t0
        self._write_log(plan, result)
        return result

    @torch.inference_mode()
    def _forward(self, plan: StepPlan, chunks: list[Chunk]) -> StepResult:
        self._prune_saved()
        L = self.num_layers
        skips = [self._resume_point(c) for c in chunks]
        ends = [c.until_layer if skip < c.until_layer < L else L
                for c, skip in zip(chunks, skips)]
        batch = build_batch(chunks, skips, ends, L, self.block_size, self.kv.num_blocks,
                            self.config.vocab_size, self.device, self.use_flash)
        h = self.model.embed(batch.input_ids)
        for i, skip in enumerate(skips):
            if skip:
                h[batch.rows_of(i)] = self._saved[chunks[i].req.id].hidden
        cos, sin = self.rope.cos_sin(batch.positions, h.dtype)
        h, done = self._run_layers(h, cos, sin, batch, plan)
        if done is not None:  # interrupted: every chunk has run exactly `done` layers
            self._save(batch, h, [done] * len(chunks))
            return StepResult(0.0, layers_done=done)
        self._save(batch, h, ends)
        return self._sample(batch, h)

    def _resume_point(self, c: Chunk) -> int:
        """Layer this chunk starts at. A resume whose saved state is gone (or stale) is run
        from layer 0, which recomputes every layer's KV and so is still correct."""
        saved = self._saved.get(c.req.id)
        if (c.skip_layers and saved is not None and saved.layers == c.skip_layers
                and saved.start == c.start and saved.n_tokens == c.n_tokens):
            return c.skip_layers
        return 0

    def _run_layers(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                    batch: StepBatch, plan: StepPlan) -> tuple[torch.Tensor, int | None]:
        """Run each chunk's layer range; return the hidden states and, if an arrival cut the
        step, the layer count reached. A cut is only taken where it is uniform: after every
        resumed chunk has caught up and before any layered chunk has left."""
        catch_up, first_exit = max(batch.skips), min(batch.ends)
        can_stop = plan.interruptible and any(c.is_prefill for c in batch.chunks)
        for layer in range(min(batch.skips), max(batch.ends)):
            rows, meta = batch.active(layer)
            if meta is None:
                continue
            k_cache, v_cache = self.kv.layer(layer)
            if rows is None:
                h = self.model.run_layer(layer, h, cos, sin, k_cache, v_cache, meta)
            else:
                h[rows] = self.model.run_layer(layer, h[rows], cos[rows], sin[rows],
                                               k_cache, v_cache, meta)
            done = layer + 1
            if can_stop and catch_up <= done < first_exit and self.interrupt.is_set():
                self.interrupt.clear()
                return h, done
        return h, None

    def _save(self, batch: StepBatch, h: torch.Tensor, layers: list[int]) -> None:
        """Keep hidden states of prefill chunks that stopped short of the last layer; forget
        any earlier state of the others."""
        for i, c in enumerate(batch.chunks):
            if c.is_prefill and layers[i] < self.num_layers:
                self._saved[c.req.id] = _Saved(c.req, c.start, c.n_tokens, layers[i],
                                               h[batch.rows_of(i)].clone())
            else:
                self._saved.pop(c.req.id, None)

    def _prune_saved(self) -> None:
        """Drop states of requests that ended (aborted mid-prefill) without a release()."""
        for rid in [rid for rid, sv in self._saved.items() if sv.req.is_finished]:
            del self._saved[rid]

    # -- sampling -----------------------------------------------------------------------
    def _sample(self, batch: StepBatch, h: torch.Tensor) -> StepResult:
        reqs = [batch.chunks[i].req for i in batch.sample_chunks]
        if not reqs:
            return StepResult(0.0, sampled={})
        logits = self.model.logits(h[batch.sample_rows()])
        params = [_params(r) for r in reqs]
        seeds = [p.seed if p.seed is not None else self.seed * 1_000_003 + r.id
                 for p, r in zip(params, reqs)]
        tokens = sample_rows(logits, params, seeds, [r.num_tokens for r in reqs])
        lp_rows = [i for i, p in enumerate(params) if p.logprobs]
        lps = chosen_logprobs(logits, lp_rows, [tokens[i] for i in lp_rows])
        result = StepResult(0.0, sampled={r.id: [t] for r, t in zip(reqs, tokens)})
        if lp_rows:
            result.logprobs = {reqs[i].id: [lp] for i, lp in zip(lp_rows, lps)}
        for r, p, t in zip(reqs, params, tokens):
            if self._stops(r, p, t):
                result.finished.add(r.id)
        return result

    def _stops(self, req: Request, p: SamplingParams, token: int) -> bool:
        """EOS (unless ignored), a stop token id, or a stop string in the recent output."""
        if (token in self.eos_token_ids and not p.ignore_eos) or token in p.stop_token_ids:
            return True
        if not p.stop:
            return False
        if self.tokenizer is None:
            raise ValueError(f"request {req.id}: stop strings need the model's tokenizer.json")
        # Enough tokens to cover the longest stop string even at one byte per token.
        window = 4 * max(len(s) for s in p.stop) + 2
        toks = req.content.tokens
        output = toks[max(req.prompt_len, len(toks) - window):] + [token]
        text = self.tokenizer.decode(output)
        return any(s in text for s in p.stop)

    def _write_log(self, plan: StepPlan, result: StepResult) -> None:
        if self._log is None:
            return
        self._log.write(json.dumps(step_line(plan, result)) + "\n")
        self._log.flush()


def _open_log(path: str | Path):
    try:
        return open(path, "a")
    except OSError as e:
        raise ConfigError(f"step log {path}: cannot open for writing ({e.strerror})") from None


def _params(req: Request) -> SamplingParams:
    sp = req.sampling
    if sp is None:
        return GREEDY
    if not isinstance(sp, SamplingParams):
        raise ValueError(f"request {req.id}: sampling must be SamplingParams or None, "
                         f"got {type(sp).__name__}")
    return sp
