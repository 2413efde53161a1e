"""``sluice perf fit``: measured kernel timings -> per-GPU efficiency coefficients.

Two stages, both here so the data path is readable end to end:

1. ``extract(shared)`` turns the raw measured datasets (AIConfigurator per-kernel vLLM timings,
   Vidur per-op profiles, LLMServingSim in-vLLM layer profiles) into small uniform tables in
   ``sluice/data/perf/measured/`` (committed, with licences), one per operator class:
   ``gemm``, ``attn`` (prefill, decode and mixed batches), ``moe``, ``allreduce``. Times are
   seconds per call of one layer's operator on one GPU; shapes are per GPU (after TP).
2. ``fit_gpu(tables)`` fits :class:`Coeffs` for one GPU by minimising the mean absolute log
   error (a symmetric stand-in for MAPE) with coordinate search (GEMM/MoE efficiency curves)
   and weighted linear least squares (attention, all-reduce), using exactly the formulas the
   runtime uses (``vec_*`` below mirror ``roofline.StepCostModel``; a test checks they agree).

GPUs without measurements get a *prior* from donor GPUs (``perf/priors.py``).
The end-to-end runs (llmservingsim/bench) are never read here.
"""

from __future__ import annotations

import csv
import functools
import gzip
import hashlib
import json
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from sluice.perf.fitted import coeffs_path, coeffs_to_dict
from sluice.perf.hardware import GPUS, GPUSpec
from sluice.perf.priors import GROUPS as _GROUPS
from sluice.perf.priors import prior_for, prior_from, prior_key  # noqa: F401 (public here too)
from sluice.perf.roofline import _LOG2_KNOTS, ATTN_TILE, Coeffs, ar_index

MEASURED = coeffs_path().parent / "measured"
TABLES = {
    "gemm": ["source", "gpu", "model", "group", "m", "n", "k", "time_s"],
    "attn": ["source", "gpu", "model", "group", "p_seqs", "p_new", "p_ctx", "d_seqs", "d_ctx", "heads",
             "kv_heads", "head_dim", "time_s"],
    "moe": ["source", "gpu", "model", "tokens", "hidden", "inter", "topk", "experts", "touched",
            "time_s"],
    "allreduce": ["source", "gpu", "model", "n_gpus", "nbytes", "time_s"],
    # norms + rotary + activation (+ residual add) of one layer, summed
    # ``qk``: per-GPU width of q + k when the model normalises them per head (Qwen3), else 0
    "elementwise": ["source", "gpu", "model", "tokens", "hidden", "qkv", "inter", "qk", "time_s"],
}
_AIC_GPU = {"h100_sxm": ("h100", "0.19.0"), "a100_sxm": ("a100-80g", "0.14.0"),
            "l40s": ("l40s", "0.14.0")}
_VIDUR_GPU = {"a100": "a100-80g", "h100": "h100", "a40": "a40"}
_PROF_GPU = {"RTX4090": "rtx-4090", "RTXPRO6000": "rtx-pro-6000"}
_POW2 = {1 << i for i in range(16)}


# ---- stage 1: extraction ----------------------------------------------------------------------
def _rows_gz(path: Path) -> Iterable[dict[str, str]]:
    with gzip.open(path, "rt", newline="") as f:
        yield from csv.DictReader(f)


def _rows(path: Path) -> Iterable[dict[str, str]]:
    with open(path, newline="") as f:
        yield from csv.DictReader(f)


def _aic(shared: Path, out: dict[str, list[list[Any]]]) -> None:
    base = shared / "groundtruth" / "aiconfigurator" / "systems-data"
    for sku, (gpu, ver) in _AIC_GPU.items():
        for r in _rows_gz(base / sku / "gemm" / "vllm" / ver / "gemm_perf.csv.gz"):
            m = int(r["m"])
            if r["gemm_dtype"] == "bfloat16" and (m in _POW2 or m in (48, 96, 192, 384, 768)):
                out["gemm"].append(["aic", gpu, f"grid:{r['n']}x{r['k']}", "-", m, int(r["n"]),
                                    int(r["k"]), float(r["latency"]) / 1e3])
        att = base / sku / "attention" / "vllm" / ver
        for r in _rows_gz(att / "context_attention_perf.csv.gz"):
            if r["kv_cache_dtype"] != "bfloat16" or r.get("window_size", "0") not in ("0", ""):
                continue
            out["attn"].append(["aic", gpu, f"grid:h{r['num_heads']}kv{r['num_key_value_heads']}", "-",
                                int(r["batch_size"]), int(r["isl"]), 0, 0, 0, int(r["num_heads"]),
                                int(r["num_key_value_heads"]), int(r["head_dim"]),
                                float(r["latency"]) / 1e3])
        for r in _rows_gz(att / "generation_attention_perf.csv.gz"):
            if r["kv_cache_dtype"] != "bfloat16" or r.get("window_size", "0") not in ("0", ""):
                continue
            ctx = int(r["isl"]) + int(r["step"])
            out["attn"].append(["aic", gpu, f"grid:h{r['num_heads']}kv{r['num_key_value_heads']}", "-",
                                0, 0, 0, int(r["batch_size"]), ctx, int(r["num_heads"]),
                                int(r["num_key_value_heads"]), int(r["head_dim"]),
                                float(r["latency"]) / 1e3])
        for r in _rows_gz(base / sku / "moe" / "vllm" / ver / "moe_perf.csv.gz"):
            if r["moe_dtype"] != "bfloat16" or r["distribution"] != "balanced" or r["moe_ep_size"] != "1":
                continue
            tp = int(r["moe_tp_size"])
            out["moe"].append(["aic", gpu, f"grid:{r['hidden_size']}x{r['inter_size']}e{r['num_experts']}",
                               int(r["num_tokens"]), int(r["hidden_size"]), int(r["inter_size"]) // tp,
                               int(r["topk"]), int(r["num_experts"]),
                               min(int(r["num_experts"]), int(r["num_tokens"]) * int(r["topk"])),
                               float(r["latency"]) / 1e3])
        ar = base / sku / "comm" / "vllm" / ver / "custom_allreduce_perf.csv.gz"
        for r in _rows_gz(ar):
            if r["backend"] == "vllm_graph" and r["allreduce_dtype"] == "bfloat16":
                out["allreduce"].append(["aic", gpu, f"grid:ar{r['message_size']}", int(r["num_gpus"]),
                                         2 * int(r["message_size"]), float(r["latency"]) / 1e3])


def _vidur(shared: Path, out: dict[str, list[list[Any]]]) -> None:
    base = shared / "anchors" / "vidur-data" / "data" / "profiling"
    ops = {"attn_pre_proj": "qkv", "attn_post_proj": "o", "mlp_up_proj": "up", "mlp_down_proj": "down"}
    for gdir, gpu in _VIDUR_GPU.items():
        for f in sorted((base / "compute" / gdir).glob("*/*/mlp.csv")):
            model = f.parent.name.lower()
            for r in _rows(f):
                t = int(r["num_tokens"])
                if t not in _POW2 and t % 256:
                    continue
                tp = int(r["num_tensor_parallel_workers"])
                h, kvh, d = int(r["n_head"]), int(r["n_kv_head"]), int(r["n_embd"])
                hd = d // h
                inter = int(r["n_expanded_embd"])
                gated = r["use_gated_mlp"] == "True"
                shapes = {"qkv": ((h + 2 * kvh) * hd // tp, d), "o": (d, h * hd // tp),
                          "up": ((2 if gated else 1) * inter // tp, d), "down": (d, inter // tp)}
                # Vidur's norm/rope/act/add timings are not used: they time unfused add + norm,
                # not vLLM 0.19's fused kernels (the LLMServingSim profiles below are).
                for col, op in ops.items():
                    v = r.get(f"time_stats.{col}.median", "")
                    if v:
                        n, k = shapes[op]
                        out["gemm"].append(["vidur", gpu, model, f"{model}/tp{tp}", t, n, k,
                                            float(v) / 1e3])
    # Vidur's a100/attention.csv is not used: it times an attention path ~2.5x slower than
    # vLLM's own flash-attn kernels on the same GPU (AIConfigurator), i.e. another engine.


_PROF_MODELS = {"Llama-3.1-8B": "llama-3.1-8b", "Qwen3-32B": "qwen3-32b",
                "Qwen3-30B-A3B-Instruct-2507": "qwen3-30b-a3b"}


def _profiles(shared: Path, out: dict[str, list[list[Any]]]) -> None:
    from sluice.perf.models import load_arch

    base = shared / "groundtruth" / "llmservingsim" / "profiles-v1"
    for hw, gpu in _PROF_GPU.items():
        for mdir in sorted((base / hw).glob("*/*/bf16")):
            model = _PROF_MODELS[mdir.parent.name]
            a = load_arch(model)
            for tpdir in sorted(mdir.glob("tp*")):
                tp = int(tpdir.name[2:])
                ffn = a.intermediate if not a.is_moe else 0
                shapes = {"qkv_proj": ((a.q_dim + 2 * a.kv_dim) // tp, a.hidden),
                          "o_proj": (a.hidden, a.q_dim // tp)}
                if ffn:
                    shapes |= {"gate_up_proj": (2 * ffn // tp, a.hidden), "down_proj": (a.hidden, ffn // tp)}
                ew: dict[int, float] = {}
                for r in _rows_gz(tpdir / "dense.csv.gz"):
                    t = int(r["tokens"])
                    if r["layer"] in ("act_fn", "rotary_emb", "qk_norm", "layernorm"):
                        ew[t] = ew.get(t, 0.0) + float(r["time_us"]) / 1e6 * (
                            2 if r["layer"] == "layernorm" else 1)
                    if r["layer"] in shapes and (t in _POW2 or t % 256 == 0):
                        n, k = shapes[r["layer"]]
                        out["gemm"].append(["prof", gpu, model, f"{model}/tp{tp}", t, n, k,
                                            float(r["time_us"]) / 1e6])
                # per-head q/k norm width on this GPU (KV heads replicated when tp > kv heads)
                qk = (a.num_heads // tp + max(a.num_kv_heads // tp, 1)) * a.head_dim if a.qk_norm else 0
                for t, v in sorted(ew.items()):
                    # MoE layers: no act_fn row (the activation runs inside fused_moe), inter = 0
                    if t in _POW2 or t % 256 == 0:
                        out["elementwise"].append(["prof", gpu, model, t, a.hidden,
                                                   (a.q_dim + 2 * a.kv_dim) // tp, ffn // tp, qk, v])
                for r in _rows_gz(tpdir / "per_sequence.csv.gz"):
                    s = int(r["sequences"])
                    if r["layer"] == "lm_head" and s in _POW2:
                        out["gemm"].append(["prof", gpu, model, f"{model}/tp{tp}/lm_head", s,
                                            a.vocab // tp, a.hidden, float(r["time_us"]) / 1e6])
                h, kvh = a.num_heads // tp, max(a.num_kv_heads // tp, 1)
                for i, r in enumerate(_rows_gz(tpdir / "attention.csv.gz")):
                    if i % 4:
                        continue  # the grid is dense; a quarter keeps every regime
                    pc, kp = int(r["prefill_chunk"]), int(r["kv_prefill"])
                    nd, kd = int(r["n_decode"]), int(r["kv_decode"])
                    out["attn"].append(["prof", gpu, model, f"{model}/tp{tp}", 1 if pc else 0, pc,
                                        kp if pc else 0, nd,
                                        kd if nd else 0, h, kvh, a.head_dim, float(r["time_us"]) / 1e6])
                moe = tpdir / "moe.csv.gz"
                if moe.is_file():
                    for r in _rows_gz(moe):
                        out["moe"].append(["prof", gpu, model, int(r["tokens"]), a.hidden,
                                           a.moe_intermediate // tp, a.top_k, a.num_experts,
                                           int(r["activated_experts"]), float(r["time_us"]) / 1e6])


def _splitwise(shared: Path, dest: Path) -> None:
    """Llama-2-70B static-batch step times on A100/H100, mean over repeats (validation only)."""
    rows: dict[tuple, list[tuple[float, float]]] = {}
    gpus = {"a100-80gb": "a100-80g", "h100-80gb": "h100"}
    for r in _rows(shared / "groundtruth" / "splitwise-sim" / "perf_model.csv"):
        if r["model"] != "llama2-70b" or r["hardware"] not in gpus:
            continue
        key = (gpus[r["hardware"]], int(r["tensor_parallel"]), int(r["prompt_size"]),
               int(r["batch_size"]), int(r["token_size"]))
        rows.setdefault(key, []).append((float(r["prompt_time"]), float(r["token_time"])))
    lines = ["gpu,tp,prompt,batch,tokens,prompt_time_s,token_time_s"]
    for k in sorted(rows):
        v = rows[k]
        pt, tt = sum(a for a, _ in v) / len(v) / 1e3, sum(b for _, b in v) / len(v) / 1e3
        lines.append(",".join(str(x) for x in k) + f",{pt!r},{tt!r}")
    with gzip.GzipFile(dest / "splitwise_steps.csv.gz", "wb", mtime=0) as gz:
        gz.write(("\n".join(lines) + "\n").encode())


def extract(shared: Path, dest: Path = MEASURED) -> dict[str, int]:
    """Write the compact measured tables from the raw datasets; returns row counts."""
    out: dict[str, list[list[Any]]] = {k: [] for k in TABLES}
    _aic(shared, out)
    _vidur(shared, out)
    _profiles(shared, out)
    dest.mkdir(parents=True, exist_ok=True)
    _splitwise(shared, dest)
    for name, cols in TABLES.items():
        with gzip.GzipFile(dest / f"{name}.csv.gz", "wb", mtime=0) as gz:
            text = "\n".join([",".join(cols)] + [",".join(_fmt(v) for v in row) for row in out[name]])
            gz.write((text + "\n").encode())
    load_tables.cache_clear()
    return {k: len(v) for k, v in out.items()}


def _fmt(v: Any) -> str:
    return repr(v) if isinstance(v, float) else str(v)


# ---- loading --------------------------------------------------------------------------------
class Table:
    """Columns of one measured table as numpy arrays (strings stay object arrays)."""

    def __init__(self, cols: dict[str, np.ndarray]) -> None:
        self.cols = cols

    def __getitem__(self, k: str) -> np.ndarray:
        return self.cols[k]

    def __len__(self) -> int:
        return len(self.cols["time_s"])

    def where(self, mask: np.ndarray) -> "Table":
        return Table({k: v[mask] for k, v in self.cols.items()})


@functools.lru_cache(maxsize=4)
def load_tables(src: Path = MEASURED) -> dict[str, Table]:
    """The measured tables (cached per folder: callers must not modify the arrays)."""
    tables = {}
    for name, cols in TABLES.items():
        with gzip.open(src / f"{name}.csv.gz", "rt", newline="") as f:
            rows = list(csv.reader(f))[1:]
        data: dict[str, np.ndarray] = {}
        for i, c in enumerate(cols):
            vals = [r[i] for r in rows]
            data[c] = np.array(vals, dtype=object) if c in ("source", "gpu", "model", "group") \
                else np.array(vals, dtype=np.float64)
        data["l2_copies"] = bench_copies(data["source"], name)
        tables[name] = Table(data)
    return tables


# How the kernel-level sources time an operator, as far as the L2 cache is concerned: the number
# of distinct copies of the operator's data one timed loop cycles through (0 = cold, the data is
# evicted between timed calls as in a real step).
# * AIConfigurator's vLLM collectors time a CUDA graph that re-runs the operator: GEMMs cycle
#   through 6 RowParallelLinear layers of the same shape (``outside_loop_count = 6`` in
#   collector/vllm/collect_gemm.py), attention re-runs one layer on one KV cache
#   (collector/vllm/collect_attn.py), so whatever fits in L2 stays there.
# * Vidur times each op inside a 20-layer model run once per step (vidur/profiling/mlp/
#   mlp_wrapper.py, a layer per active step), LLMServingSim times the ops of a whole forward
#   pass of a model with its MLP weights in between: both stream their data cold.
BENCH_COPIES: dict[str, dict[str, int]] = {"aic": {"gemm": 6, "attn": 1}}


def bench_copies(source: np.ndarray, op: str) -> np.ndarray:
    """Per row: copies of its data the benchmark loop cycles through in L2 (0 = cold)."""
    return np.array([BENCH_COPIES.get(str(x), {}).get(op, 0) for x in source], dtype=np.float64)


def bench_warm(g: GPUSpec, copies: np.ndarray | None, working_set: np.ndarray,
               shared: np.ndarray | float = 0.0) -> np.ndarray:
    """1 where a benchmark row's data stays resident in L2 across its timed re-runs, else 0:
    ``copies`` copies of ``working_set`` plus the ``shared`` data all copies read (the GEMM
    collector feeds one input tensor to its 6 layers). Only for pricing isolated-kernel
    benchmark rows (fit and validation); the runtime (``StepCostModel``) streams every layer's
    weights and KV through L2 and stays cold."""
    if copies is None or not g.l2_bytes:
        return np.zeros(np.shape(working_set))
    return ((copies > 0) & (copies * working_set + shared <= g.l2_bytes)) * 1.0


def l2_factor(g: GPUSpec, cold_rate: np.ndarray | float, eff: float) -> np.ndarray | float:
    """Warm-row read time as a fraction of the cold time: the cold rate (DRAM bandwidth x the
    fitted memory efficiency) over the warm rate ``g.l2_bw`` x ``eff`` (``Coeffs.gemm_l2_eff``,
    ``dattn_l2_eff``), the warm rate never below the cold one; 1 where the L2 bandwidth is
    unknown (``l2_bw`` 0). Benchmark pricing only: ``StepCostModel`` never calls it."""
    return cold_rate / np.maximum(g.l2_bw * eff, cold_rate)


# ---- vectorised mirrors of the runtime formulas ---------------------------------------------
def _eff(m: np.ndarray, table: tuple[float, ...]) -> np.ndarray:
    x = np.log2(np.maximum(m, 1.0))
    return np.interp(x, np.asarray(_LOG2_KNOTS), np.asarray(table))


def vec_gemm(g: GPUSpec, c: Coeffs, m, n, k, wb: int = 2, copies=None) -> np.ndarray:
    """``copies``: benchmark rows' L2 condition (``bench_copies``); None = cold, as at runtime."""
    t_c = 2.0 * m * n * (k + c.gemm_k0) / (g.flops_bf16 * _eff(m, c.gemm_eff))
    t_m = (n * k * wb + 2.0 * m * (n + k)) / (g.mem_bw * c.gemm_mem_eff)
    if copies is not None:
        warm = bench_warm(g, copies, n * k * wb + 2.0 * m * n, 2.0 * m * k)
        t_m = t_m * (1.0 - warm + warm * l2_factor(g, g.mem_bw * c.gemm_mem_eff, c.gemm_l2_eff))
    return np.maximum(t_c, t_m) + c.gemm_launch


def vec_moe(g: GPUSpec, c: Coeffs, tokens, hidden, inter, topk, experts, touched=None,
            wb: int = 2) -> np.ndarray:
    """``touched`` = experts that got tokens; None = expectation under uniform routing."""
    if touched is None:
        touched = experts * (1.0 - (1.0 - topk / experts) ** tokens)
    pairs = tokens * topk
    params = 3.0 * hidden * inter
    t_c = 2.0 * pairs * params / (g.flops_bf16 * _eff(pairs / touched, c.moe_eff))
    t_m = (touched * params * wb + 4.0 * pairs * hidden * 2) / (g.mem_bw * c.moe_mem_eff)
    return np.maximum(t_c, t_m) + c.moe_launch


def mixed_splits(sms: int, seqs, heads, max_q, ctx):
    """Vectorised ``roofline.split_kv`` (the same float operations)."""
    bhm = seqs * heads * np.ceil(np.maximum(max_q, 1.0) / 64.0)
    fill = np.floor(sms / np.maximum(bhm, 1.0))
    splits = np.minimum(np.minimum(fill, np.ceil(ctx / 128.0)), 128.0)
    return np.where(bhm < 0.8 * sms, np.maximum(splits, 1.0), 1.0)


def prefill_block_count(flash_attn: int, heads, kv_heads, chunk):
    """Vectorised ``roofline.prefill_blocks`` (the same float operations)."""
    if flash_attn == 3:
        return kv_heads * np.ceil(chunk * (heads / kv_heads) / 128.0)
    return heads * np.ceil(chunk / 64.0)


def attn_features(g: GPUSpec, t: Table, kv_bytes: int = 2) -> dict[str, np.ndarray]:
    """Per-layer attention work of each row: query-key pairs, KV bytes read, sequences, and
    the thread-block counts of the flash-attention grid (see ``StepCostModel``)."""
    p_seqs, n, ctx = t["p_seqs"], t["p_new"], t["p_ctx"]
    pairs = p_seqs * (n * ctx + n * (n + 1) / 2)
    kv_tok = 2.0 * t["kv_heads"] * t["head_dim"] * kv_bytes
    head_bytes = 2.0 * t["head_dim"] * kv_bytes
    nd, heads = t["d_seqs"], t["heads"]
    ctas = nd * heads
    m_blocks = np.ceil(n / ATTN_TILE)
    group = heads / t["kv_heads"]
    q_blocks = np.ceil(n / 64.0)  # a prefill sequence's 64-row query blocks per head
    busy = nd + p_seqs * q_blocks  # non-empty blocks of one head (see mixed_decode_time)
    reuse = np.clip(g.sms / np.maximum(busy, 1.0), 1.0, group)
    ctx_d = t["d_ctx"]
    ws = nd * ctx_d * head_bytes  # one KV head's KV of all decode sequences (L2 reuse across heads)
    l2_share = np.where(ws > g.l2_bytes, g.l2_bytes / np.maximum(ws, 1.0), 1.0)
    copies = t.cols.get("l2_copies")
    warm = bench_warm(g, copies, nd * ctx_d * kv_tok)
    io_tok = (6.0 * t["kv_heads"] + 2.0 * heads) * head_bytes / 2.0  # see StepCostModel._pattn_io
    fa2 = 1.0 if g.flash_attn == 2 else 0.0  # FA2 decode: GQA swap copies, MHA unsplit
    # one-token queries only (FA2's decode path, ``StepCostModel._one_token_time``): the same
    # decode features with the prefill sequences as the batch, over their cached keys + 1
    one = fa2 * ((p_seqs > 0) & (n == 1) & (nd == 0))
    keys1 = p_seqs * (ctx + n)
    warm1 = bench_warm(g, copies, keys1 * kv_tok)
    pwarm = bench_warm(g, copies, p_seqs * n * (4.0 * t["kv_heads"] + 2.0 * heads) * head_bytes / 2.0)
    return {"pflop": 4.0 * pairs * heads * t["head_dim"] / g.flops_bf16,
            "pscore": pairs * heads / g.flops_bf16,
            "pio": p_seqs * n * io_tok / g.mem_bw * (1.0 - pwarm),
            "pio_l2": p_seqs * n * io_tok / g.mem_bw * pwarm,
            "pcrit": (p_seqs > 0) * (n + ctx) * 4.0 * t["head_dim"] * ATTN_TILE * g.sms / g.flops_bf16,
            "pcrit_score": (p_seqs > 0) * (n + ctx) * ATTN_TILE * g.sms / g.flops_bf16,
            "pcta": p_seqs * prefill_block_count(g.flash_attn, heads, t["kv_heads"], n) / g.sms,
            "log_pwork": np.log2(np.maximum((n + ctx) / 4.0, 1.0)),  # keys per query row
            "log_dseq": np.log2(np.maximum(nd, 1.0)),
            "mixed": ((p_seqs > 0) & (nd > 0)) * 1.0,
            "pctx": p_seqs * ctx * kv_tok / g.mem_bw, "pseq": p_seqs, "any_p": (p_seqs > 0) * 1.0,
            "dbytes": nd * ctx_d * kv_tok / g.mem_bw * (1.0 - warm),
            "dbytes_l2": nd * ctx_d * kv_tok / g.mem_bw * warm, "dseq": nd * t["kv_heads"] / g.sms,
            "dqh": nd * heads / g.sms,
            # FA2 GQA swap copies (batch >= 2, >= 2 KV heads, grouped); MHA per-SM streaming
            "dswap": fa2 * ((nd >= 2) & (t["kv_heads"] >= 2) & (heads > t["kv_heads"])),
            "dstream": fa2 * (heads == t["kv_heads"]) * ctx_d * head_bytes * 1e-9
            * np.ceil(nd * heads / g.sms),
            "any_d": (nd > 0) * 1.0, "nd": nd,
            "one": one, "o_bytes": keys1 * kv_tok / g.mem_bw * (1.0 - warm1),
            "o_bytes_l2": keys1 * kv_tok / g.mem_bw * warm1, "o_seq": p_seqs * t["kv_heads"] / g.sms,
            "o_qh": p_seqs * heads / g.sms,
            "o_swap": fa2 * ((p_seqs >= 2) & (t["kv_heads"] >= 2) & (heads > t["kv_heads"])),
            "o_stream": fa2 * (heads == t["kv_heads"]) * (ctx + n) * head_bytes * 1e-9
            * np.ceil(p_seqs * heads / g.sms),
            "m_waves": np.maximum(ctas / g.sms, 1.0),
            "m_stream": ctx_d * head_bytes * g.sms / g.mem_bw,
            "m_split": mixed_splits(g.sms, nd + p_seqs, heads, n, ctx_d),
            "m_dram": nd * ctx_d * heads * head_bytes / g.mem_bw,
            # heads sharing reads while co-resident, the group, the share of one KV head's KV
            # of all decode sequences that L2 holds (``StepCostModel.mixed_decode_time``)
            "m_reuse": reuse, "m_group": group, "m_l2_share": l2_share,
            "m_empty": np.maximum(m_blocks - 1.0, 0.0) * ctas / g.sms,
            # all busy blocks (64-row prefill query blocks + decode blocks) fit in one wave
            "m_one_wave": (p_seqs * heads * q_blocks + ctas <= g.sms) * 1.0}


def vec_attn(g: GPUSpec, c: Coeffs, t: Table, f: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Per-layer attention time of each row; ``f`` = precomputed ``attn_features`` (fitting)."""
    if f is None:
        f = attn_features(g, t)
    knots = np.asarray(_LOG2_KNOTS)
    eff = np.interp(f["log_pwork"], knots, np.asarray(c.pattn_eff))
    flop = f["pflop"] + c.pattn_score * f["pscore"]
    crit = f["pcrit"] + c.pattn_score * f["pcrit_score"]
    l2f = l2_factor(g, g.mem_bw * c.dattn_mem_eff, c.dattn_l2_eff)  # warm benchmark rows
    pio = (f["pio"] + f["pio_l2"] * l2f) / c.dattn_mem_eff
    pre = np.maximum(np.maximum(flop / eff + c.pattn_tail * crit, crit / c.pattn_crit_eff), pio) \
        + f["pctx"] / c.dattn_mem_eff + c.pattn_launch * f["any_p"] + c.pattn_seq * f["pseq"] \
        + c.pattn_cta * f["pcta"]
    one = f["one"]
    if one.any():  # one-token queries: FA2's decode path, capped at the prefill path's price
        o = np.maximum((f["o_bytes"] + f["o_bytes_l2"] * l2f) / c.dattn_mem_eff,
                       f["o_stream"] * c.dattn_mha_stream) \
            + c.dattn_launch + c.dattn_seq * f["o_seq"] + c.dattn_qhead * f["o_qh"] \
            + c.dattn_swap * f["o_swap"]
        pre = np.where(one > 0, np.minimum(pre, o), pre)
    mix = f["mixed"]
    dbytes = np.maximum((f["dbytes"] + f["dbytes_l2"] * l2f) / c.dattn_mem_eff,
                        f["dstream"] * c.dattn_mha_stream)
    dec = (dbytes + c.dattn_launch * f["any_d"] + c.dattn_seq * f["dseq"] + c.dattn_qhead * f["dqh"]
           + c.dattn_swap * f["dswap"]) * (1.0 - mix)
    mult = np.interp(f["log_dseq"], knots, np.asarray(c.mix_dec_factor))
    stream = f["m_waves"] * (c.mix_cta + f["m_stream"] / (c.mix_sm_eff * f["m_split"]))
    reuse = np.maximum(f["m_reuse"], 1.0 + (f["m_group"] - 1.0) * f["m_l2_share"] ** c.mix_l2_exp)
    mdec = np.maximum(stream, f["m_dram"] / (reuse * c.mix_bw_eff)) * mult + f["m_empty"] * c.mix_empty \
        + c.mix_dseq * f["nd"]
    one = f["m_one_wave"]  # side by side: the longer of the two, else the decode blocks queue
    mdec = one * np.maximum(mdec - pre, 0.0) + (1.0 - one) * mdec
    return pre + dec + mdec * mix


def vec_allreduce(g: GPUSpec, c: Coeffs, n_gpus, nbytes) -> np.ndarray:
    idx = np.array([ar_index(int(n)) for n in n_gpus], dtype=np.int64)
    ring = 2.0 * (n_gpus - 1) / n_gpus * nbytes
    return np.asarray(c.ar_latency)[idx] + ring / (g.link_bw * np.asarray(c.ar_eff)[idx])


def elementwise_parts(g: GPUSpec, t: Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: passes, cold seconds of their traffic at DRAM peak, and the seconds of the
    passes whose traffic fits in L2 (``roofline.elementwise_passes``: two norms, rotary, the
    activation when ``inter`` > 0, the q/k norms when ``qk`` > 0)."""
    tok = t["tokens"] * 2.0
    widths = [4.0 * t["hidden"], 4.0 * t["hidden"], 2.0 * t["qkv"], 3.0 * t["inter"], 2.0 * t["qk"]]
    cold, warm = np.zeros(len(tok)), np.zeros(len(tok))
    for w in widths:
        b = tok * w / g.mem_bw
        fits = tok * w <= g.l2_bytes
        cold += b * ~fits
        warm += b * fits
    return 3.0 + (t["inter"] > 0) + (t["qk"] > 0), cold, warm


def vec_elementwise(g: GPUSpec, c: Coeffs, t: Table) -> np.ndarray:
    n, cold, warm = elementwise_parts(g, t)
    return c.elementwise_launch * n + (cold + warm / c.elementwise_l2) / c.elementwise_eff


def predict(op: str, g: GPUSpec, c: Coeffs, t: Table) -> np.ndarray:
    if op == "gemm":
        return vec_gemm(g, c, t["m"], t["n"], t["k"], copies=t.cols.get("l2_copies"))
    if op == "moe":
        return vec_moe(g, c, t["tokens"], t["hidden"], t["inter"], t["topk"], t["experts"], t["touched"])
    if op == "attn":
        return vec_attn(g, c, t)
    if op == "elementwise":
        return vec_elementwise(g, c, t)
    return vec_allreduce(g, c, t["n_gpus"], t["nbytes"])


# ---- stage 2: fitting -----------------------------------------------------------------------
def _loss(pred: np.ndarray, meas: np.ndarray) -> float:
    return float(np.mean(np.abs(np.log(pred / meas))))


def _search(c: Coeffs, name: str, idx: int | None, grid: np.ndarray, f) -> Coeffs:
    """Pick the grid value of one coefficient (or one knot) that minimises ``f(coeffs)``."""
    best, best_c = f(c), c  # keep the current value unless a grid value is strictly better
    for v in grid:
        if idx is None:
            cand = _replace(c, **{name: float(v)})
        else:
            tab = list(getattr(c, name))
            tab[idx] = float(v)
            cand = _replace(c, **{name: tuple(tab)})
        loss = f(cand)
        if loss < best:
            best, best_c = loss, cand
    return best_c


def _search_level(c: Coeffs, name: str, grid: np.ndarray, f) -> Coeffs:
    """Best flat curve: a start for the per-knot search that has data everywhere."""
    best, best_c = f(c), c
    n = len(getattr(c, name))
    for v in grid:
        cand = _replace(c, **{name: (float(v),) * n})
        loss = f(cand)
        if loss < best:
            best, best_c = loss, cand
    return best_c


def _replace(c: Coeffs, **kw: Any) -> Coeffs:
    d = {f.name: getattr(c, f.name) for f in fields(Coeffs)}
    d.update(kw)
    return Coeffs(**d)


MAX_STEP = 1.6  # efficiency may at most x1.6 per doubling of size: more work never costs less


def _monotone(tab: tuple[float, ...]) -> tuple[float, ...]:
    """Efficiency never rises faster than the work (x1.6 per doubling), so the time of an
    operator is non-decreasing in its size (tests check monotone step times). Low knots are
    raised, never high ones lowered: small sizes are launch/memory bound anyway."""
    out = list(tab)
    for i in range(len(out) - 2, -1, -1):
        out[i] = max(out[i], out[i + 1] / MAX_STEP)
    return tuple(out)


def _search_curve(c: Coeffs, curve: str, grid: np.ndarray, f) -> Coeffs:
    """Each knot of an efficiency curve in turn, then the curve made monotone (``_monotone``)."""
    for i in range(len(_LOG2_KNOTS)):
        c = _search(c, curve, i, grid, f)
    return _replace(c, **{curve: _monotone(getattr(c, curve))})


def _fit_curve(c: Coeffs, t: Table, g: GPUSpec, op: str, curve: str, mem: str, launch: str) -> Coeffs:
    if len(t) == 0:
        return c
    meas = t["time_s"]
    warm_rows = op == "gemm" and g.l2_bw > 0 and bool(bench_warm(
        g, t.cols.get("l2_copies"), t["n"] * t["k"] * 2.0 + 2.0 * t["m"] * t["n"],
        2.0 * t["m"] * t["k"]).any())
    # Warm rows' read rate, searched as a multiple (1-5x) of the current cold rate and stored as
    # a fraction of the GPU's L2 bandwidth (``gemm_l2_eff``, see ``l2_factor``). The multiple is
    # held while the cold efficiency moves, so the warm rows do not pull on it.
    mult = [1.0]

    def warm_eff(cc: Coeffs, m: float) -> Coeffs:
        return _replace(cc, gemm_l2_eff=m * g.mem_bw * cc.gemm_mem_eff / g.l2_bw) if warm_rows else cc

    def f(cc: Coeffs) -> float:
        return _loss(predict(op, g, warm_eff(cc, mult[0]), t), meas)

    eff_grid = np.geomspace(0.005, 1.3, 60)
    c = _search_level(c, curve, eff_grid, f)
    for _ in range(3):
        c = _search(c, mem, None, np.linspace(0.3, 1.2, 46), f)
        c = _search(c, launch, None, np.concatenate([[0.0], np.geomspace(5e-7, 1e-4, 40)]), f)
        if warm_rows:
            best = f(c)  # keep the current multiple unless a grid value is strictly better
            for m in np.geomspace(1.0, 5.0, 41):
                loss = _loss(predict(op, g, warm_eff(c, float(m)), t), meas)
                if loss < best:
                    best, mult[0] = loss, float(m)
        if op == "gemm":
            c = _search(c, "gemm_k0", None, np.concatenate([[0.0], np.geomspace(16.0, 4096.0, 33)]), f)
        c = _search_curve(c, curve, eff_grid, f)
    return warm_eff(c, mult[0])


def _wls(cols: list[np.ndarray], y: np.ndarray) -> np.ndarray:
    """Least squares on relative error (rows weighted by 1/y), coefficients clipped at >= 0."""
    a = np.stack(cols, axis=1) / y[:, None]
    sol, *_ = np.linalg.lstsq(a, np.ones_like(y), rcond=None)
    return np.maximum(sol, 0.0)


_TAIL_GRID = np.concatenate([[0.0], np.geomspace(0.02, 2.0, 30)])  # prefill tail, critical paths
_PATTN_EFF_GRID = np.geomspace(0.01, 1.3, 50)  # prefill FLOP efficiency knots
_CRIT_EFF_GRID = np.geomspace(0.05, 3.0, 50)  # one SM's efficiency on the critical path


def _fit_attn(c: Coeffs, t: Table, g: GPUSpec) -> Coeffs:
    """Decode (linear), then prefill (efficiency curve), then the mixed-batch decode penalty;
    where both kinds of rows exist, the prefill curve and tail once more on prefill and mixed
    rows together (``_refit_prefill``) and the mixed penalty after them."""
    f = attn_features(g, t)
    y = t["time_s"]
    dec = (t["p_seqs"] == 0) & (t["d_seqs"] > 0)
    pre = (t["p_seqs"] > 0) & (t["d_seqs"] == 0)
    mix = (t["p_seqs"] > 0) & (t["d_seqs"] > 0)
    if dec.sum() >= 4:
        c = _fit_decode(c, t.where(dec), g)
    if pre.sum() >= 4:
        tp_ = t.where(pre)
        fp = attn_features(g, tp_)

        def loss(cc: Coeffs) -> float:
            return _loss(vec_attn(g, cc, tp_, fp), tp_["time_s"])

        # the per-chunk cost is priced per thread block (``pattn_cta``): a per-sequence cost
        # is not identified where every row is one sequence (the in-vLLM profiles), and its
        # fitted value there (1.4-1.8 us) made the prior's multi-sequence rows 1.5-2x slow
        c = _replace(c, pattn_seq=0.0)
        c = _search_level(c, "pattn_eff", _PATTN_EFF_GRID, loss)
        for _ in range(3):
            c = _search(c, "pattn_launch", None, np.concatenate([[0.0], np.geomspace(5e-7, 1e-4, 40)]), loss)
            c = _search(c, "pattn_cta", None, np.concatenate([[0.0], np.geomspace(1e-7, 3e-5, 40)]), loss)
            c = _search(c, "pattn_crit_eff", None, _CRIT_EFF_GRID, loss)
            c = _search(c, "pattn_tail", None, _TAIL_GRID, loss)
            c = _search(c, "pattn_score", None, np.concatenate([[0.0], np.geomspace(8.0, 2048.0, 41)]), loss)
            c = _search_curve(c, "pattn_eff", _PATTN_EFF_GRID, loss)
    if mix.sum() >= 4:
        c = _fit_mixed(c, t.where(mix), g)
        if pre.sum() >= 4:
            c = _refit_prefill(c, t.where(pre | mix), g)
            c = _fit_mixed(c, t.where(mix), g)
    return c


def _refit_prefill(c: Coeffs, tb: Table, g: GPUSpec) -> Coeffs:
    """The prefill tail (``pattn_tail``), critical path and FLOP efficiency again, on the
    prefill and mixed rows together (then the mixed coefficients once more). A mixed row
    prices its prefill chunk with the same formula, and the in-vLLM profiles have one
    prefill-only row per shape against ~8 mixed rows (one per decode batch), most of them
    dominated by the chunk: fitted on the prefill rows alone, the tail and the curve rest on
    ~60 rows per model, and 64-query-head chunks (4.7 µs per head at 2,048 tokens against
    5.4 with 32 heads and 6.4-6.7 with 16, RTX PRO 6000) were priced 15-25% slow."""
    fb = attn_features(g, tb)

    def loss(cc: Coeffs) -> float:
        return _loss(vec_attn(g, cc, tb, fb), tb["time_s"])

    for _ in range(2):
        c = _search(c, "pattn_tail", None, _TAIL_GRID, loss)
        c = _search(c, "pattn_crit_eff", None, _CRIT_EFF_GRID, loss)
        c = _search_curve(c, "pattn_eff", _PATTN_EFF_GRID, loss)
    return c


def _fit_decode(c: Coeffs, td: Table, g: GPUSpec) -> Coeffs:
    """Decode-only rows: weighted least squares on the rows where DRAM traffic bounds the KV
    read, alternating with a search of the MHA per-SM streaming cost (``dattn_mha_stream``,
    only when there are MHA rows) on their log error."""
    f = attn_features(g, td)
    y = td["time_s"]
    mha = f["dstream"] > 0
    c = _replace(c, dattn_mha_stream=0.0)
    cols = ["dbytes", "any_d", "dseq", "dqh", "dswap"]
    # benchmark rows whose KV stays in L2: own read rate (where the L2 bandwidth is known)
    warm = (f["dbytes_l2"] > 0).sum() >= 4 and g.l2_bw > 0
    if warm:
        cols.append("dbytes_l2")

    def loss(cc: Coeffs) -> float:
        return _loss(vec_attn(g, cc, td, f), y)

    for _ in range(3 if mha.sum() >= 4 else 1):
        dram = (f["dbytes"] + f["dbytes_l2"] * l2_factor(g, g.mem_bw * c.dattn_mem_eff,
                                                          c.dattn_l2_eff)) / c.dattn_mem_eff
        keep = f["dstream"] * c.dattn_mha_stream <= dram
        s = _wls([f[k][keep] for k in cols], y[keep])
        kw = dict(dattn_mem_eff=1.0 / max(s[0], 1.0 / 1.3), dattn_launch=float(s[1]),
                  dattn_seq=float(s[2]), dattn_qhead=float(s[3]), dattn_swap=float(s[4]))
        if warm:  # seconds per cold-rate byte-time s[5] -> warm rate mem_bw / s[5] (>= cold)
            rate = max(g.mem_bw / max(float(s[5]), 1e-12), g.mem_bw * kw["dattn_mem_eff"])
            kw["dattn_l2_eff"] = rate / g.l2_bw
        c = _replace(c, **kw)
        if mha.sum() >= 4:
            c = _search(c, "dattn_mha_stream", None,
                        np.concatenate([[0.0], np.geomspace(0.005, 0.2, 50)]), loss)
    return c


def _fit_mixed(c: Coeffs, tm: Table, g: GPUSpec) -> Coeffs:
    """The decode rows of a mixed batch (``StepCostModel.mixed_decode_time``): per-wave cost,
    per-SM streaming rate, DRAM efficiency, empty-block cost and the L2 reuse falloff
    (``mix_l2_exp``), by coordinate search on the
    mixed rows' log error (the prefill part is already fitted on pure-prefill rows)."""
    fm = attn_features(g, tm)

    def loss(cc: Coeffs) -> float:
        return _loss(vec_attn(g, cc, tm, fm), tm["time_s"])

    c = _replace(c, mix_dec_factor=(1.0,) * len(_LOG2_KNOTS), mix_dseq=0.0)
    for _ in range(3):
        c = _search(c, "mix_sm_eff", None, np.geomspace(0.01, 10.0, 70), loss)
        c = _search(c, "mix_bw_eff", None, np.geomspace(0.1, 8.0, 60), loss)
        c = _search(c, "mix_cta", None, np.concatenate([[0.0], np.geomspace(1e-7, 3e-5, 40)]), loss)
        c = _search(c, "mix_empty", None, np.concatenate([[0.0], np.geomspace(1e-8, 1e-5, 40)]), loss)
        c = _search(c, "mix_l2_exp", None, np.linspace(0.5, 6.0, 45), loss)
    return c


def _fit_allreduce(c: Coeffs, t: Table, g: GPUSpec) -> Coeffs:
    """Latency + bandwidth per GPU count (PCIe all-reduce scales far worse than NVLink)."""
    lat, eff = list(c.ar_latency), list(c.ar_eff)
    for i in range(3):
        sub = t.where(np.array([ar_index(int(n)) == i for n in t["n_gpus"]], dtype=bool))
        if len(sub) < 3:
            continue
        ring = 2.0 * (sub["n_gpus"] - 1) / sub["n_gpus"] * sub["nbytes"] / g.link_bw
        s = _wls([np.ones(len(sub)), ring], sub["time_s"])
        lat[i], eff[i] = float(s[0]), 1.0 / max(float(s[1]), 1.0 / 1.5)
    return _replace(c, ar_latency=tuple(lat), ar_eff=tuple(eff))


def _fit_elementwise(c: Coeffs, t: Table, g: GPUSpec) -> Coeffs:
    if len(t) < 3:
        return c
    n, cold, warm = elementwise_parts(g, t)
    best = None
    for l2 in np.geomspace(1.0, 8.0, 31) if warm.any() else [1.0]:
        s = _wls([n, cold + warm / l2], t["time_s"])
        eff = 1.0 / max(float(s[1]), 1.0 / 3.0)
        cc = _replace(c, elementwise_launch=float(s[0]), elementwise_eff=eff, elementwise_l2=float(l2))
        loss = _loss(vec_elementwise(g, cc, t), t["time_s"])
        if best is None or loss < best[0]:
            best = (loss, cc)
    # eff: an accounting factor more than a physical efficiency (vLLM fuses some passes, so
    # fewer bytes move than the unfused count): allowed up to 3
    return best[1]


def fit_gpu(tables: dict[str, Table], gpu: str, start: Coeffs) -> Coeffs:
    """Coefficients for ``gpu`` from the rows measured on it (others keep ``start``)."""
    g = GPUS[gpu]
    sub = {k: v.where(v["gpu"] == gpu) for k, v in tables.items()}
    c = _fit_curve(start, sub["gemm"], g, "gemm", "gemm_eff", "gemm_mem_eff", "gemm_launch")
    c = _fit_curve(c, sub["moe"], g, "moe", "moe_eff", "moe_mem_eff", "moe_launch")
    c = _fit_attn(c, sub["attn"], g)
    c = _fit_elementwise(c, sub["elementwise"], g)
    return _fit_allreduce(c, sub["allreduce"], g)


def measured_gpus(tables: dict[str, Table]) -> list[str]:
    return sorted({str(x) for t in tables.values() for x in t["gpu"]})


def ops_measured(tables: dict[str, Table], gpu: str) -> set[str]:
    """Coefficient groups that ``gpu`` has rows for."""
    has = {op for op, t in tables.items() if op in _GROUPS and (t["gpu"] == gpu).any()}
    a = tables["attn"]
    if ((a["gpu"] == gpu) & (a["p_seqs"] > 0) & (a["d_seqs"] > 0)).any():
        has.add("mixed")
    if ((a["gpu"] == gpu) & (a["p_seqs"] > 0) & (a["d_seqs"] == 0)).sum() >= 4:
        has.add("prefill")
    dec = (a["gpu"] == gpu) & (a["p_seqs"] == 0) & (a["d_seqs"] > 0) & (GPUS[gpu].flash_attn == 2)
    if (dec & (a["heads"] == a["kv_heads"])).any():
        has.add("mha_decode")
    if (dec & (a["d_seqs"] >= 2) & (a["kv_heads"] >= 2) & (a["heads"] > a["kv_heads"])).any():
        has.add("fa2_swap")
    # warm-L2 benchmark rows, on a GPU whose L2 bandwidth is known (the efficiency is of it)
    if GPUS[gpu].l2_bw > 0 and any(((t["gpu"] == gpu) & (t["l2_copies"] > 0)).any()
                                   for t in tables.values()):
        has.add("l2")
    return has


def fit_all(tables: dict[str, Table], start: Coeffs, exclude_gpu: str | None = None
            ) -> tuple[dict[str, Coeffs], dict[str, set[str]]]:
    """Per-GPU fits, operator classes a GPU has no rows for taken from the other GPUs' prior
    (``priors.prior_for``: same die, else family, else all; by flash-attention generation and
    interconnect where that matters), and the groups each GPU has rows for."""
    gpus = [g for g in measured_gpus(tables) if g != exclude_gpu]
    raw = {g: fit_gpu(tables, g, start) for g in gpus}
    has = {g: ops_measured(tables, g) for g in gpus}
    fitted = {g: prior_for(GPUS[g], raw[g], raw, has, start, GPUS, keep=has[g])[0] for g in gpus}
    return fitted, has


def unmeasured_priors(fitted: dict[str, Coeffs], has: dict[str, set[str]], start: Coeffs
                      ) -> dict[str, tuple[Coeffs, dict[str, str]]]:
    """What each GPU of ``hardware.GPUS`` without measurements gets at runtime: the same rule
    the validation's unseen-GPU line scores (``validate._fill``)."""
    return {name: prior_for(spec, start, fitted, has, start, GPUS)
            for name, spec in GPUS.items() if name not in fitted}


def split_key(model: str) -> float:
    """Deterministic pseudo-random number in [0, 1) per model/shape tag (for held-out splits)."""
    return int(hashlib.sha256(model.encode()).hexdigest()[:8], 16) / 2**32


def run_fit(shared: Path | None = None, out: Path | None = None) -> dict[str, Any]:
    """Extract (when ``shared`` is given), fit on all measured rows, write coeffs.json."""
    from sluice.perf.fitted import PRIOR

    counts = extract(shared) if shared is not None else None
    if shared is not None:
        from sluice.perf.validate import extract_e2e

        extract_e2e(shared)
    tables = load_tables()
    fitted, has = fit_all(tables, PRIOR)
    pri = unmeasured_priors(fitted, has, PRIOR)
    doc = {"comment": "written by `sluice perf fit`; efficiencies are fractions of hardware.py peaks; "
                      "priors: what each unmeasured GPU gets (perf/priors.py), sources: the prior "
                      "each coefficient group came from",
           "gpus": {g: coeffs_to_dict(c) for g, c in fitted.items()},
           "measured_groups": {g: sorted(h) for g, h in has.items()},
           "priors": {g: coeffs_to_dict(c) for g, (c, _) in pri.items()},
           "prior_sources": {g: k for g, (_, k) in pri.items()}}
    path = out or coeffs_path()
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return {"written": str(path), "gpus": sorted(fitted), "rows": counts or
            {k: len(v) for k, v in tables.items()}}
