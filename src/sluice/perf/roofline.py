"""Step cost as a sum of operator costs, each bounded by compute and by memory traffic.

Why one class for roofline, fitted and calibrated models: they differ only in the numbers
(:class:`Coeffs`) that turn FLOPs and bytes into seconds. The roofline is ``Coeffs()`` with
every efficiency at 1 and no overheads; the fitted model supplies efficiencies measured on
kernels; a calibration rescales the result. Keeping one code path is what makes
``decode_run`` bit-identical to ``step_time`` (PerfModel contract): a decode-only step is
``fixed(batch) + slope * ctx`` in both, with the same float operations in the same order.

Per step, per GPU (TP shards weights, heads and experts ``tp`` ways):

* dense GEMMs (qkv, o, gate/up, down, lm_head) for ``T`` tokens: ``max(flops/(P*e(T)),
  bytes/(BW*e_mem)) + launch``, the flops counting a per-tile prologue/epilogue
  (``gemm_k0``); ``e(T)`` is piecewise-linear in log2(T) (small-M GEMMs cannot fill the
  tensor cores);
* MoE: routed-expert FLOPs for ``T*top_k`` token-expert pairs and the weights of the experts
  touched, ``E*(1-(1-k/E)^T)`` in expectation under uniform routing;
* attention: prefill FLOPs from query-key pairs (``prefill_attn``) plus a softmax cost per
  score, at an efficiency indexed by the keys a query row attends to (chunk + cached context),
  at least the critical path of the last 128-row block (and a fitted share of it on top of
  the FLOP time: the last wave's tail) and the chunk's own Q/K/V/O and
  KV-cache traffic, plus KV read of the cached context and a cost per wave of thread blocks
  (``prefill_blocks``); decode reads ``decode_ctx`` tokens of KV, plus per-layer,
  per thread-block-wave and per-query-head costs, and on FA2 GPUs the GQA swap copies and MHA
  decode's per-SM streaming (``decode_fixed`` / ``decode_slope``; a step of one-token
  prefills only runs FA2's decode path too, ``_one_token_time``); in a mixed prefill+decode step the decode rows run one block per
  query head without GQA packing, split-KV only when the grid is small, heads reusing KV
  while co-resident and through L2 while it fits (falling off at a fitted rate beyond),
  side by side with the prefill blocks when all fit in one wave (``mixed_decode_time``);
* norms / rotary / activation (and per-head q/k norms where the model has them) as bytes
  moved (``elementwise``);
* TP all-reduce twice per layer of ``T*hidden`` activations (ring: ``2(tp-1)/tp`` of the bytes);
* per-step CPU/launch overhead and a per-sequence host cost (scheduling, sampling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from sluice.core.plan import BatchStats
from sluice.perf.hardware import GPUSpec
from sluice.perf.models import ModelArch

_LOG2_KNOTS: tuple[float, ...] = tuple(float(i) for i in range(0, 16))  # M = 1 .. 32768
ATTN_TILE = 128  # query rows per flash-attention thread block (FA2/FA3, head_dim 128)


@dataclass(slots=True)
class Coeffs:
    """Efficiencies (fractions of peak) and overheads (seconds). Defaults = pure roofline."""

    gemm_eff: tuple[float, ...] = (1.0,) * len(_LOG2_KNOTS)  # compute eff at M=2**knot
    gemm_mem_eff: float = 1.0
    gemm_launch: float = 0.0  # per GEMM call
    # per output element, in multiply-adds of K: a thread block's prologue/epilogue (pipeline
    # fill, accumulator write-out) is paid once per output tile whatever K is, so short-K
    # GEMMs reach a lower fraction of peak than long-K ones of the same M
    gemm_k0: float = 0.0
    moe_eff: tuple[float, ...] = (1.0,) * len(_LOG2_KNOTS)  # compute eff vs token-expert pairs/expert
    moe_mem_eff: float = 1.0
    moe_launch: float = 0.0  # per MoE layer
    # FLOP efficiency at mean keys per query row (chunk + cached context) = 4*2**knot: a thread
    # block's loop over key blocks amortises its prologue/epilogue, whatever the chunk length
    pattn_eff: tuple[float, ...] = (1.0,) * len(_LOG2_KNOTS)
    pattn_seq: float = 0.0  # per prefill chunk per layer (not fitted: see ``pattn_cta``)
    pattn_crit_eff: float = 1.0  # one SM's FLOP efficiency on the last 128-row block (critical path)
    # the last wave's tail, in critical-path times at one SM's peak, on top of the FLOP time: a
    # grid of many blocks is a list schedule, which ends at most one block's run after its
    # work over the SMs (Graham's bound), and a causal chunk's last blocks are its longest
    pattn_tail: float = 0.0
    # softmax work per query-key score (exp on the special-function units, max/sum/scale), in
    # tensor-core FLOP equivalents: it does not shrink with the head dim as the matmuls do
    pattn_score: float = 0.0
    pattn_launch: float = 0.0  # per layer when any prefill
    # per wave of prefill thread blocks (``prefill_blocks`` / sms): a block's fixed start-up
    # and write-out, paid however few query rows it holds (seconds, absolute)
    pattn_cta: float = 0.0
    dattn_mem_eff: float = 1.0  # decode attention bandwidth efficiency
    dattn_seq: float = 0.0  # per wave of decode thread blocks (seqs x kv heads / sms) per layer
    dattn_launch: float = 0.0  # per layer when any decode
    # per query head of each decode sequence, per ``sms`` of them: the Q read and the O (or
    # split-KV partial output) written per query row, whatever the KV layout
    dattn_qhead: float = 0.0
    # FA2 GQA decode (``seqlenq_ngroups_swapped``: the query heads of one KV head become the
    # rows of one block) reshapes q and the output through a transpose, i.e. two copy kernels,
    # whenever that transpose is not a view: batch >= 2 and >= 2 KV heads per GPU
    dattn_swap: float = 0.0
    # MHA decode (query heads == KV heads: no GQA swap, and FA2 splits the keys only on the
    # swapped path): one thread block per sequence and head streams that sequence's whole KV on
    # one SM; seconds per GB one block streams (absolute: ~22 GB/s on A100, ~29 on L40S, where
    # shares of DRAM bandwidth per SM differ 3x), 0 = not limited (FA3 splits MHA decode too)
    dattn_mha_stream: float = 0.0
    # Decode rows inside a mixed prefill+decode batch (vLLM: one varlen flash-attention call;
    # query length > 1 turns off split-KV and the GQA packing, so each decode row is one thread
    # block per *query* head streaming its whole context; see ``mixed_decode_time``):
    mix_cta: float = 0.0  # fixed cost of one wave of decode thread blocks
    mix_sm_eff: float = 1.0  # per-SM KV streaming rate as a multiple of mem_bw / sms (one SM can
    # draw more than its even share of DRAM bandwidth)
    mix_bw_eff: float = 1.0  # DRAM efficiency of the per-query-head KV reads
    mix_empty: float = 0.0  # per empty thread block per SM (grid = m-blocks x seqs x heads)
    # residual multiplier on the decode part at decode_seqs = 2**knot (1 = none; kept for
    # calibration files of the earlier model, where it was the whole mixed-batch penalty)
    mix_dec_factor: tuple[float, ...] = (1.0,) * len(_LOG2_KNOTS)
    mix_dseq: float = 0.0  # extra per decode sequence per layer inside a mixed batch
    # how fast the heads' L2 reuse falls off once one KV head's KV of all decode sequences
    # (the reuse distance of a cyclic scan) outgrows L2: hit fraction (l2 / working set) ** this.
    # A cyclic scan longer than the cache thrashes an LRU-like cache (hits -> 0), a random one
    # keeps a share of the lines; 1 = the share of the cache the scan would fill (older model)
    mix_l2_exp: float = 1.0
    ar_latency: tuple[float, ...] = (0.0, 0.0, 0.0)  # per all-reduce call, for 2 / 4 / 8 GPUs
    ar_eff: tuple[float, ...] = (1.0, 1.0, 1.0)  # fraction of link bandwidth, for 2 / 4 / 8 GPUs
    elementwise_eff: float = 1.0  # norms, rope, activation: bytes moved vs bandwidth
    elementwise_launch: float = 0.0  # per pass (kernel): 2 norms, rotary, activation, q/k norm
    # read rate of a pass whose whole traffic fits in L2, as a multiple of the DRAM rate: its
    # input is the activation the previous kernel has just written (in a step as in a profile)
    elementwise_l2: float = 1.0
    step_overhead: float = 0.0  # per step (scheduler, launch, python)
    seq_overhead: float = 0.0  # per sequence in the step (input prep, sampling)
    scale: float = 1.0  # calibration multiplier on the whole step
    # Benchmark-only (never read by StepCostModel): isolated-kernel benchmarks re-run one kernel,
    # so data that fits in L2 is read at L2 speed; a step streams every layer and reads cold.
    # Read rate of L2-resident data = ``GPUSpec.l2_bw`` (measured L2 bandwidth) x this
    # efficiency, never below the cold rate (``perf.fit.l2_factor``); fitted per GPU on the warm
    # benchmark rows so that the cold efficiencies above are not biased by them. A fraction of a
    # spec number, like the other efficiencies, so a GPU without rows takes the donors' median
    # efficiency times its own L2 bandwidth. 0 = warm rows read at the cold rate.
    gemm_l2_eff: float = 0.0
    dattn_l2_eff: float = 0.0


def _interp_log2(m: float, table: tuple[float, ...]) -> float:
    """Piecewise-linear lookup in log2(m), clamped at the ends (called once per distinct T)."""
    if m <= 1.0:
        return table[0]
    x = math.log2(m)
    if x >= _LOG2_KNOTS[-1]:
        return table[-1]
    i = int(x)
    f = x - i
    return table[i] * (1.0 - f) + table[i + 1] * f


def ar_index(n: int) -> int:
    """Coefficient slot for an all-reduce over ``n`` GPUs: 2 -> 0, 4 -> 1, 8+ -> 2."""
    return min(max(int(n).bit_length() - 2, 0), 2)


def split_kv(sms: int, seqs: float, heads: int, max_q: float, ctx: float) -> float:
    """Split-KV factor of vLLM's varlen flash-attention call (FA2 ``num_splits_heuristic``):
    with a paged KV cache it runs 64-row query blocks, and when ``seqs x heads x blocks``
    covers less than 80% of the SMs it splits each sequence's keys (blocks of 128) so that about
    one wave of thread blocks fills the GPU: a few decodes next to a short chunk stream their KV
    over several SMs each. ``fit.mixed_splits`` is the vectorised mirror."""
    bhm = seqs * heads * math.ceil(max(max_q, 1.0) / 64.0)
    if bhm >= 0.8 * sms:
        return 1.0
    splits = min(math.floor(sms / max(bhm, 1.0)), math.ceil(ctx / 128.0), 128.0)
    return max(splits, 1.0)


def prefill_blocks(flash_attn: int, heads: int, kv_heads: int, chunk: float) -> float:
    """Thread blocks of one prefill chunk per layer in vLLM's paged flash-attention call: FA2
    runs its split kernel (64 query rows per block, one block per query head); FA3 with a page
    table packs a KV head's query heads into the rows of its 128-row blocks (``pack_gqa``).
    ``fit.prefill_block_count`` is the vectorised mirror."""
    if flash_attn == 3:
        return kv_heads * math.ceil(chunk * (heads / kv_heads) / 128.0)
    return heads * math.ceil(chunk / 64.0)


def agrs_exchange_tokens(ranks: tuple[float, ...]) -> float:
    """The all-reduce size (tokens) whose ring traffic on the busiest link equals one MoE
    layer's AgRs exchange for these per-rank token counts (``StepCostModel.moe_time``).

    vLLM's ``all_gatherv`` is one grouped ``ncclBroadcast`` per root rank and its
    ``reduce_scatterv`` one ``ncclReduce`` per root (``PyNcclCommunicator``,
    ``vllm/distributed/device_communicators/pynccl.py``). On a ring, root ``r``'s broadcast
    crosses every link but the one into ``r`` and its reduce every link but the one out of
    ``r``, so the busiest link carries ``sum - min`` tokens in each collective, while a ring
    all-reduce of ``x`` tokens carries ``2 (n-1)/n x``. Equal counts give ``x = n * count``;
    on two ranks ``x = 2 * max``: the exchange waits for the larger rank's tokens both ways."""
    n = len(ranks)
    return n * (sum(ranks) - min(ranks)) / (n - 1)


def elementwise_passes(arch: ModelArch, tp: int, qkv: int) -> tuple[float, ...]:
    """Elements read + written per token by each memory-bound pass of one layer on one GPU:
    two (fused add +) RMSNorms (x and residual in and out), rotary on q/k (``qkv`` wide),
    SiLU-and-mul of the dense or shared-expert MLP (gate+up in, one out; the routed experts'
    activation runs inside fused_moe and is priced with it), and the per-head q/k norms."""
    a = arch
    passes = [4.0 * a.hidden, 4.0 * a.hidden, 2.0 * qkv]
    inter = (a.shared_intermediate if a.is_moe else a.intermediate) / tp
    if inter:
        passes.append(3.0 * inter)
    if a.qk_norm:
        kv = max(a.num_kv_heads // tp, 1)
        passes.append(2.0 * (max(a.num_heads // tp, 1) + kv) * a.head_dim)
    return tuple(passes)


@dataclass(slots=True)
class _Shapes:
    """Per-GPU GEMM shapes (N, K) of one layer and of the lm_head."""

    layer: list[tuple[int, int]] = field(default_factory=list)
    lm_head: tuple[int, int] = (0, 0)


class StepCostModel:
    """A PerfModel for (model, GPU, TP) given :class:`Coeffs`."""

    def __init__(self, arch: ModelArch, gpu: GPUSpec, tp: int, coeffs: Coeffs, *, name: str,
                 max_model_len: int, kv_blocks_fn=None, ep: int = 1) -> None:
        self.arch, self.gpu, self.tp, self.c = arch, gpu, tp, coeffs
        self.ep = ep  # expert parallel over ``ep`` data-parallel ranks (vLLM DP+EP)
        self.name = name
        self.num_layers = arch.num_layers
        self.max_model_len = max_model_len
        self.kv_bytes_per_token = arch.kv_bytes_per_token()
        self._kv_blocks_fn = kv_blocks_fn
        self.block_size = 16  # for pricing swapped blocks; set by kv_capacity_blocks
        self._peak = gpu.flops_fp8 if (arch.weight_bytes == 1 and gpu.flops_fp8) else gpu.flops_bf16
        self._attn_peak = gpu.flops_bf16
        self._cache: dict[tuple[float, int], float] = {}
        self._kv_heads_gpu = max(arch.num_kv_heads // tp, 1)  # vLLM replicates KV heads if tp > kv
        kv_layer_gpu = 2 * self._kv_heads_gpu * arch.head_dim * arch.kv_bytes  # per token, layer, GPU
        self._shapes = self._gemm_shapes()
        self._kv_tok_gpu = arch.num_layers * kv_layer_gpu  # KV bytes of one token on one GPU
        L = arch.num_layers
        self._dec_slope = L * kv_layer_gpu / (gpu.mem_bw * coeffs.dattn_mem_eff) * coeffs.scale
        self._slopes: dict[int, float] = {}  # decode slope per batch size (MHA per-SM streaming)
        self._lines: dict[int, tuple[float, float, float]] = {}  # decode_line per batch
        self._pctx_slope = L * kv_layer_gpu / (gpu.mem_bw * coeffs.dattn_mem_eff)
        # flash-attention thread blocks: 128 query rows of one head; the last block of a chunk
        # attends to the whole context (its FLOPs on one SM are the critical path)
        self._heads_gpu = max(arch.num_heads // tp, 1)
        score = coeffs.pattn_score  # per query-key score and head, on top of 4 x head_dim FLOPs
        self._pattn_flop = L * (4.0 * arch.q_dim / tp + score * self._heads_gpu) / self._attn_peak
        self._pattn_crit = L * (4.0 * arch.head_dim + score) * ATTN_TILE * gpu.sms / self._attn_peak
        # a prefill chunk's own traffic: Q, K, V read, K, V written to the paged cache and read
        # back by the kernel, O written (short chunks of many-KV-head models are memory bound:
        # FLOPs per byte grow only with the chunk length)
        io_tok = (6 * self._kv_heads_gpu + 2 * self._heads_gpu) * arch.head_dim * arch.kv_bytes
        self._pattn_io = L * io_tok / (gpu.mem_bw * coeffs.dattn_mem_eff)
        self._dec_waves = self._kv_heads_gpu / gpu.sms  # decode thread-block waves per sequence
        self._dec_qwaves = self._heads_gpu / gpu.sms  # query heads per sequence, per SM
        grouped = self._heads_gpu > self._kv_heads_gpu
        fa2 = gpu.flash_attn == 2  # FA3 packs the group in the kernel and splits MHA decode too
        self._fa2 = fa2
        # GQA swap transposes (two copy kernels) when neither batch nor KV heads is 1
        self._dec_swap = coeffs.dattn_swap if fa2 and grouped and self._kv_heads_gpu >= 2 else 0.0
        self._head_bytes = 2.0 * arch.head_dim * arch.kv_bytes  # K+V of one token, one head
        self._ew_passes = elementwise_passes(arch, tp, self._shapes.layer[0][0])
        # MHA decode without split-KV: a wave of ``sms`` blocks streams one sequence's KV each
        self._mha_stream = (0.0 if grouped or not fa2 else
                            L * self._head_bytes * coeffs.dattn_mha_stream * 1e-9)

    # ---- static parts -------------------------------------------------------------------
    def _gemm_shapes(self) -> _Shapes:
        a, tp = self.arch, self.tp
        s = _Shapes()
        qkv = a.q_dim // tp + 2 * self._kv_heads_gpu * a.head_dim
        s.layer.append((qkv, a.hidden))  # qkv (column parallel)
        s.layer.append((a.hidden, a.q_dim // tp))  # o (row parallel)
        inter = a.shared_intermediate if a.is_moe else a.intermediate
        if inter:
            s.layer.append((2 * inter // tp, a.hidden))  # gate+up fused
            s.layer.append((a.hidden, inter // tp))  # down
        if a.is_moe:
            s.layer.append((a.num_experts, a.hidden))  # router (replicated)
        s.lm_head = (a.vocab // tp, a.hidden)
        return s

    def gemm_time(self, m: float, n: int, k: int) -> float:
        """One GEMM of (m x k) @ (k x n) on this GPU."""
        if m <= 0:
            return 0.0
        c = self.c
        wb = self.arch.weight_bytes
        flops = 2.0 * m * n * (k + c.gemm_k0)
        eff = _interp_log2(m, c.gemm_eff)
        t_c = flops / (self._peak * eff)
        t_m = (n * k * wb + 2.0 * m * (n + k)) / (self.gpu.mem_bw * c.gemm_mem_eff)
        return (t_c if t_c > t_m else t_m) + c.gemm_launch

    def moe_time(self, tokens: float, ranks: tuple[float, ...] | None = None) -> float:
        """Routed experts of one layer for this rank's ``tokens`` (weights sharded ``tp`` ways).

        With expert parallelism over ``ep`` DP ranks each rank holds ``E/ep`` experts and
        serves the tokens of all ranks: vLLM's default all2all (``AgRsAll2AllManager``,
        ``vllm/distributed/device_communicators/all2all.py``) all-gathers every rank's tokens
        (dispatch) and reduce-scatters the outputs (combine). ``ranks``: every EP rank's token
        count in this step; by default each carries this rank's count, which is what vLLM runs
        when it pads the DP ranks to the largest one (``sim.lockstep.dp_padded``). Under
        uniform routing a rank computes ``sum(ranks) * top_k / ep`` token-expert pairs, touches
        its experts for ``sum(ranks)`` tokens, and the exchange is priced as an all-reduce of
        ``agrs_exchange_tokens(ranks)`` tokens (``ep * tokens`` when the ranks are equal)."""
        a, c = self.arch, self.c
        if not a.is_moe or tokens <= 0:
            return 0.0
        e, k, ep = a.num_experts, a.top_k, self.ep
        if ranks is None:
            seen, pairs, wire = tokens * ep, tokens * k, tokens * ep
        else:
            if len(ranks) != ep:
                raise ValueError(f"moe_time: {len(ranks)} rank token counts for ep={ep}")
            seen = float(sum(ranks))
            pairs = seen * k / ep
            wire = agrs_exchange_tokens(ranks) if ep > 1 else 0.0
        touched = e / ep * (1.0 - (1.0 - k / e) ** seen)
        per_expert = pairs / touched
        flops = 2.0 * pairs * a.expert_params() / self.tp
        eff = _interp_log2(per_expert, c.moe_eff)
        t_c = flops / (self._peak * eff)
        bytes_ = touched * a.expert_params() * a.weight_bytes / self.tp + 4.0 * pairs * a.hidden * 2
        t_m = bytes_ / (self.gpu.mem_bw * c.moe_mem_eff)
        comm = self.allreduce_time(wire, ep) if ep > 1 else 0.0
        return (t_c if t_c > t_m else t_m) + c.moe_launch + comm

    def allreduce_time(self, tokens: float, n: int | None = None) -> float:
        """One all-reduce of ``tokens x hidden`` bf16 activations across ``n`` (= tp) GPUs."""
        n = self.tp if n is None else n
        if n <= 1 or tokens <= 0:
            return 0.0
        i = ar_index(n)
        nbytes = tokens * self.arch.hidden * 2.0
        ring = 2.0 * (n - 1) / n * nbytes
        return self.c.ar_latency[i] + ring / (self.gpu.link_bw * self.c.ar_eff[i])

    def elementwise_time(self, tokens: float) -> float:
        """Norms, rotary, activation of one layer (and the per-head q/k norms of models that
        have them): memory-bound passes, each a launch plus its traffic, at L2 speed when the
        pass's traffic fits in L2 (``elementwise_passes``; ``fit.vec_elementwise`` mirrors it)."""
        c = self.c
        t = c.elementwise_launch * len(self._ew_passes)
        cold = self.gpu.mem_bw * c.elementwise_eff
        l2 = self.gpu.l2_bytes
        for width in self._ew_passes:
            nbytes = tokens * 2.0 * width
            t += nbytes / cold / (c.elementwise_l2 if nbytes <= l2 else 1.0)
        return t

    def token_time(self, tokens: float, seqs: int,
                   ranks: tuple[float, ...] | None = None) -> float:
        """Everything that depends only on the token and sequence counts (cached per key);
        ``ranks``: every EP rank's token count, for the MoE layers (``moe_time``)."""
        key = (tokens, seqs) if ranks is None else (tokens, seqs, ranks)
        t = self._cache.get(key)
        if t is not None:
            return t
        c = self.c
        layer = 0.0
        for n, k in self._shapes.layer:
            layer += self.gemm_time(tokens, n, k)
        layer += self.moe_time(tokens, ranks)
        layer += 2.0 * self.allreduce_time(tokens)
        layer += self.elementwise_time(tokens)
        n, k = self._shapes.lm_head
        t = self.num_layers * layer + self.gemm_time(seqs, n, k)
        t += c.step_overhead + c.seq_overhead * seqs
        if len(self._cache) > 200_000:
            self._cache.clear()
        self._cache[key] = t
        return t

    def prefill_attn_time(self, s: BatchStats) -> float:
        """FLOPs at an efficiency indexed by the mean chunk, but never less than the critical
        path: the last 128-row block of a chunk attends to all its keys on one SM, so a grid
        of fewer blocks than SMs (few heads, short batch) cannot go faster than that block.
        A grid of many blocks pays a share of that block on top of its FLOP time
        (``pattn_tail``): blocks are handed to SMs as they free up (a list schedule, which
        ends within one block's run of its work over the SMs), and a causal chunk's last,
        longest blocks are the tail. In the profiles a 2,048-token chunk costs ~4.0 µs per
        query head plus ~45 µs, whatever the head count (16, 32, 64), about one critical path."""
        c = self.c
        chunk = s.prefill_tokens / s.prefill_seqs
        keys = chunk + s.prefill_ctx / s.prefill_seqs  # what the last query row attends to
        eff = _interp_log2(keys / 4.0, c.pattn_eff)
        flops_t = s.prefill_attn * self._pattn_flop / eff
        crit = keys * self._pattn_crit / c.pattn_crit_eff
        flops_t += c.pattn_tail * keys * self._pattn_crit
        io = s.prefill_tokens * self._pattn_io
        ctx_t = s.prefill_ctx * self._pctx_slope
        blocks = s.prefill_seqs * prefill_blocks(self.gpu.flash_attn, self._heads_gpu,
                                                 self._kv_heads_gpu, chunk)
        per = self.num_layers * (c.pattn_launch + c.pattn_seq * s.prefill_seqs
                                 + c.pattn_cta * blocks / self.gpu.sms)
        t = max(flops_t, crit, io) + ctx_t + per
        if self._fa2 and s.prefill_tokens == s.prefill_seqs and not s.decode_seqs:
            one = self._one_token_time(s.prefill_seqs, s.prefill_ctx + s.prefill_tokens)
            return one if one < t else t
        return t

    def _one_token_time(self, seqs: int, keys: float) -> float:
        """A step of one-token queries only (every chunk is one token, no decodes), unscaled.
        FA2 then sees ``max_seqlen_q == 1`` and runs its decode path (GQA swap copies, split-KV
        or MHA per-SM streaming, ``decode_fixed`` / ``decode_slope`` without the scale): the
        grid's one-token "prefills" of 256 sequences × 48 query / 1 KV heads take 23 µs on A100
        where the prefill path's block waves price 150-390 µs. Capped at the prefill path's
        price: at 2-4 sequences with grouped heads the swap copies make a one-token batch
        dearer than a 16-token one (A100: 18 vs 11.5 µs), and the model keeps "more work never
        costs less" (a 2-token chunk is priced on the prefill path) rather than that inversion."""
        c = self.c
        swap = self._dec_swap if seqs >= 2 else 0.0
        fixed = self.num_layers * (c.dattn_launch + c.dattn_seq * seqs * self._dec_waves
                                   + c.dattn_qhead * seqs * self._dec_qwaves + swap)
        slope = self._pctx_slope
        if self._mha_stream > 0.0:
            st = self._mha_stream * math.ceil(seqs * self._heads_gpu / self.gpu.sms) / seqs
            slope = st if st > slope else slope
        return fixed + slope * keys

    def decode_fixed(self, seqs: int) -> float:
        """Decode-attention cost independent of context length: launch, waves of thread blocks
        (one per sequence and KV head), the per-query-head Q/O traffic, the GQA swap copies."""
        if seqs <= 0:
            return 0.0
        c = self.c
        swap = self._dec_swap if seqs >= 2 else 0.0
        return self.num_layers * (c.dattn_launch + c.dattn_seq * seqs * self._dec_waves
                                  + c.dattn_qhead * seqs * self._dec_qwaves + swap) * c.scale

    def decode_slope(self, seqs: int) -> float:
        """Decode-attention cost per KV token (summed over the batch) of a batch of ``seqs``:
        the DRAM rate, or for MHA without split-KV the per-SM streaming rate of
        ``ceil(seqs x heads / sms)`` waves of blocks that each read one sequence's KV (mean
        context ``ctx / seqs``), whichever is slower. Constant for a given batch size, so a
        decode-only step stays ``fixed(batch) + slope(batch) * ctx`` (exact fast-forward)."""
        s = self._slopes.get(seqs)
        if s is None:
            s = self._dec_slope
            if self._mha_stream > 0.0 and seqs > 0:
                waves = math.ceil(seqs * self._heads_gpu / self.gpu.sms)
                st = self._mha_stream * waves / seqs * self.c.scale
                s = st if st > s else s
            self._slopes[seqs] = s
        return s

    def mixed_decode_time(self, s: BatchStats, pre: float) -> float:
        """What the decode rows add to a mixed batch's attention, per step (all layers), given
        ``pre`` = ``prefill_attn_time(s)``. One thread block per decode sequence and query head
        streams that sequence's KV (split over several SMs when the grid is small,
        ``split_kv``): waves of ``sms`` blocks at a per-SM rate, or the DRAM traffic of the
        per-head reads, whichever is longer; plus the empty blocks the grid holds
        (``ceil(max query len / 128)`` per sequence).

        DRAM traffic: the query heads of one KV group read the same KV. The grid runs query
        block fastest, then sequence, then head, so heads share a read directly only while
        their blocks are resident together (``sms / busy blocks per head`` heads at a time:
        one per decode sequence and ``ceil(chunk / 64)`` per prefill sequence; a decode
        sequence's empty query blocks exit at once and hold no SM, so a long chunk next to
        the decodes does not cut the sharing: in the profiles, 128 decodes over 16k tokens
        take the same time next to a 16- and a 615-token chunk), and
        otherwise through L2 when one KV head's KV of all decode sequences is still there when
        the next head comes round (hit fraction ``(l2_bytes / working set) ** mix_l2_exp``,
        capped at 1: each head re-reads the group's KV in the same order, a cyclic scan, and a
        scan longer than the cache evicts its own lines before they come round again, so the
        hits fall off faster than the share of the working set the cache holds; the exponent
        is fitted on the mixed-batch rows).

        Overlap: the varlen kernel runs prefill and decode blocks in one grid. When all busy
        blocks (prefill: ``ceil(chunk / 64)`` 64-row query blocks per sequence and head, the
        split kernel's tile; decode: one per sequence and head) fit on the SMs at once, they
        run side by side and the step's attention is the longer of the two; otherwise blocks
        queue behind each other and the decode blocks add their time."""
        c, g = self.c, self.gpu
        nd = s.decode_seqs
        heads = self._heads_gpu
        ctas = nd * heads
        waves = ctas / g.sms if ctas > g.sms else 1.0
        ctx = s.decode_ctx / nd
        chunk = s.prefill_tokens / s.prefill_seqs
        split = split_kv(g.sms, nd + s.prefill_seqs, heads, chunk, ctx)
        stream = waves * (c.mix_cta
                          + ctx * self._head_bytes * g.sms / (g.mem_bw * c.mix_sm_eff * split))
        m_blocks = math.ceil(chunk / ATTN_TILE)
        group = heads / self._kv_heads_gpu
        q_blocks = math.ceil(chunk / 64.0)  # a prefill sequence's 64-row query blocks per head
        busy = nd + s.prefill_seqs * q_blocks  # non-empty blocks of one head
        reuse = g.sms / (busy if busy > 1.0 else 1.0)
        reuse = group if reuse > group else (reuse if reuse > 1.0 else 1.0)
        ws = s.decode_ctx * self._head_bytes  # one KV head's KV of all decode sequences
        hit = (g.l2_bytes / ws) ** c.mix_l2_exp if ws > g.l2_bytes else 1.0
        hit = 1.0 + (group - 1.0) * hit
        reuse = hit if hit > reuse else reuse
        dram = s.decode_ctx * heads * self._head_bytes / (reuse * g.mem_bw * c.mix_bw_eff)
        mult = _interp_log2(nd, c.mix_dec_factor)
        t = (stream if stream > dram else dram) * mult + (m_blocks - 1) * ctas / g.sms * c.mix_empty \
            + c.mix_dseq * nd
        dec = self.num_layers * t * c.scale
        if s.prefill_seqs * heads * q_blocks + ctas <= g.sms:  # one wave: side by side
            pre = pre * c.scale
            return dec - pre if dec > pre else 0.0
        return dec

    # ---- PerfModel ------------------------------------------------------------------------
    def step_time(self, stats: BatchStats, moe_ranks: tuple[float, ...] | None = None) -> float:
        """``moe_ranks``: every EP rank's token count in this step, for the MoE layers (the
        ``ExpertParallelModel`` hook; by default each rank carries this one's, see ``moe_time``)."""
        seqs = stats.prefill_seqs + stats.decode_seqs
        tokens = stats.prefill_tokens + stats.decode_seqs
        if seqs == 0 and tokens <= 0:
            return 0.0
        fixed = self.token_time(tokens, seqs, moe_ranks)
        pre = self.prefill_attn_time(stats) if stats.prefill_seqs else 0.0
        base = (fixed + pre) * self.c.scale
        if stats.prefill_seqs and stats.decode_seqs:  # one varlen kernel: decode rows pay more
            dec = self.mixed_decode_time(stats, pre)
        else:
            dec = self.decode_fixed(stats.decode_seqs) + self.decode_slope(stats.decode_seqs) * stats.decode_ctx
        return base + dec  # swaps are priced by the executor with swap_time (may overlap)

    def decode_line(self, batch: int) -> tuple[float, float, float]:
        """``(base, fixed, slope)``: a decode-only step of ``batch`` sequences reading ``ctx``
        KV tokens costs ``(slope * ctx + fixed) + base``, the very float operations of
        ``decode_run`` and ``step_time`` — for pricing a few steps without numpy's per-call
        overhead (most fast-forward runs are cut by an arrival after a handful of steps)."""
        line = self._lines.get(batch)
        if line is None:  # a pure function of the batch size, asked again by every run
            base = (self.token_time(batch + 0.0, batch) + 0.0) * self.c.scale
            line = self._lines[batch] = (base, self.decode_fixed(batch), self.decode_slope(batch))
        return line

    def decode_run(self, batch: int, ctx_sum: int, k: int) -> np.ndarray:
        if k <= 0:
            return np.zeros(0, dtype=np.float64)
        if batch <= 0:
            return np.zeros(k, dtype=np.float64)
        fixed = self.token_time(batch + 0.0, batch)
        base = (fixed + 0.0) * self.c.scale
        # integers below 2**53 are exact in float64: the same values step_time sees
        ctx = np.arange(ctx_sum, ctx_sum + k * batch, batch, dtype=np.float64)
        dec = self.decode_slope(batch) * ctx
        dec += self.decode_fixed(batch)
        dec += base
        return dec

    def swap_time(self, blocks: int, contiguous_runs: int) -> float:
        """Host<->GPU copy of the blocks plus a copy launch per contiguous run per layer (~5 us:
        vLLM copies each layer's KV tensor separately)."""
        if blocks <= 0:
            return 0.0
        nbytes = blocks * self.block_size * self._kv_tok_gpu
        return nbytes / self.gpu.host_bw + 5e-6 * max(contiguous_runs, 1) * self.num_layers

    def kv_capacity_blocks(self, block_size: int) -> int:
        if self._kv_blocks_fn is None:
            raise NotImplementedError("kv capacity needs a memory plan")
        self.block_size = block_size
        return self._kv_blocks_fn(block_size)
