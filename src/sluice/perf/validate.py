"""``sluice perf validate``: how wrong is the performance model, on data it was not fitted on?

Four checks, all offline from the tables shipped in ``sluice/data/perf``:

1. **Held-out models.** Rows are split by model (Vidur / LLMServingSim profiles name the model;
   AIConfigurator grid shapes count as pseudo-models, split by a hash of the shape), the model
   is refitted on the training split and MAPE is reported per operator class, GPU and model on
   the held-out split, also over the named models' rows alone (``named_models``: grid shapes
   are shapes, not models) and per GPU split into named models vs grid shapes.
2. **Unseen GPUs.** For each measured GPU, its coefficients are replaced by the prior built
   from the *other* GPUs (what an unmeasured GPU such as H200 gets) and its held-out rows are
   scored again (the same named-model / grid-shape split).
3. **KV capacity** against block counts recorded by real vLLM runs.
4. **End to end**: the LLMServingSim real vLLM 0.19 runs replayed through the simulator with
   their engine config (TTFT / TPOT / E2E mean and p90). Never used for fitting.
Splitwise static-batch step times (another, unnamed engine) are reported as a step-level check.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from sluice.perf.fit import (MEASURED, Table, fit_gpu, load_tables, measured_gpus, ops_measured,
                             predict, split_key, vec_attn, vec_gemm)
from sluice.perf.fitted import PRIOR, coeffs_path
from sluice.perf.hardware import GPUS
from sluice.perf.priors import prior_for
from sluice.perf.roofline import Coeffs

DATA = coeffs_path().parent
E2E = DATA / "e2e"
# Models held out from fitting in the validation split (all have measured rows).
TEST_MODELS = frozenset({"llama-2-70b-hf", "internlm-20b", "qwen3-32b", "meta-llama-3-8b"})
GRID_TEST_FRACTION = 0.3


def is_test(model: str) -> bool:
    if model.startswith("grid"):
        return split_key(model) < GRID_TEST_FRACTION
    return model in TEST_MODELS


def op_class(op: str, t: Table) -> np.ndarray:
    """Finer operator class per row: attention splits into prefill / decode / mixed."""
    if op != "attn":
        return np.full(len(t), op, dtype=object)
    p, d = t["p_seqs"] > 0, t["d_seqs"] > 0
    return np.where(p & d, "mixed_attn", np.where(p, "prefill_attn", "decode_attn")).astype(object)


def _mape(ape: np.ndarray) -> float:
    return round(float(100.0 * np.mean(ape)), 2) if len(ape) else None


def _split(tables: dict[str, Table]) -> tuple[dict[str, Table], dict[str, Table]]:
    train, test = {}, {}
    for op, t in tables.items():
        mask = np.array([is_test(str(m)) for m in t["model"]], dtype=bool)
        train[op], test[op] = t.where(~mask), t.where(mask)
    return train, test


def _fill(raw: dict[str, Coeffs], has: dict[str, set[str]], exclude: str | None = None
          ) -> dict[str, Coeffs]:
    """Operator classes a GPU has no rows for come from the other GPUs' prior; ``exclude``
    (the unseen GPU) gets every class from the others' prior: the function that writes the
    runtime priors of unmeasured GPUs into coeffs.json (``priors.prior_for``)."""
    pool = {g: c for g, c in raw.items() if g != exclude}
    return {g: prior_for(GPUS[g], c, pool, has, PRIOR, GPUS,
                         keep=has[g] if g != exclude else frozenset())[0]
            for g, c in raw.items()}


def _score(test: dict[str, Table], coeffs: dict[str, Coeffs]) -> list[tuple[str, str, str, float, float]]:
    """(op class, gpu, model, predicted, measured) for every held-out row."""
    rows = []
    for op, t in test.items():
        cls = op_class(op, t)
        for g in sorted(set(str(x) for x in t["gpu"])):
            m = t["gpu"] == g
            sub = t.where(m)
            pred = predict(op, GPUS[g], coeffs[g], sub)
            for c_, mod, p, y in zip(cls[m], sub["model"], pred, sub["time_s"]):
                rows.append((str(c_), g, "grid" if str(mod).startswith("grid") else str(mod),
                             float(p), float(y)))
    return rows


def _summarise(rows: list[tuple[str, str, str, float, float]]) -> dict[str, Any]:
    """MAPE overall and per operator class, GPU and model; ``named_models``: the same over the
    rows of held-out *named* models only (the AIConfigurator grid shapes, held out by a hash of
    the shape, are not models), the split the ≤10% held-out-model target speaks of."""
    if not rows:
        return {}
    cls = np.array([r[0] for r in rows], dtype=object)
    gpu = np.array([r[1] for r in rows], dtype=object)
    mod = np.array([r[2] for r in rows], dtype=object)
    ape = np.abs(np.array([r[3] for r in rows]) / np.array([r[4] for r in rows]) - 1.0)
    per = lambda keys, a=ape: {k: {"mape": _mape(a[keys == k]), "n": int((keys == k).sum())}  # noqa: E731
                               for k in sorted(set(keys))}
    by_op = per(cls)
    named = mod != "grid"
    return {"overall": {"mape": _mape(ape), "median_ape": round(float(100 * np.median(ape)), 2),
                        "n": len(ape),
                        "mean_of_op_classes": round(float(np.mean([v["mape"] for v in by_op.values()])), 2)},
            "by_op": by_op, "by_gpu": per(gpu), "by_model": per(mod),
            "named_models": {"mape": _mape(ape[named]), "n": int(named.sum()),
                             "median_ape": (round(float(100 * np.median(ape[named])), 2)
                                            if named.any() else None),
                             "by_op": per(cls[named], ape[named])}}


def _by_source(rows: list[tuple[str, str, str, float, float]]) -> dict[str, Any]:
    """Per GPU: MAPE over the rows of named models and over the grid shapes."""
    out: dict[str, Any] = {}
    for g in sorted({r[1] for r in rows}):
        d = {}
        for key, grid in (("named_models", False), ("grid_shapes", True)):
            ape = np.array([abs(r[3] / r[4] - 1.0) for r in rows if r[1] == g and (r[2] == "grid") == grid])
            d[key] = {"mape": _mape(ape), "n": len(ape)}
        out[g] = d
    return out


def layer_composites(test: dict[str, Table], coeffs: dict[str, Coeffs]
                     ) -> list[tuple[str, str, str, float, float]]:
    """Whole-layer checks for held-out models profiled op by op: the layer's projection GEMMs
    at ``T`` tokens (``layer_gemm``), plus an attention batch of exactly ``T`` tokens
    (``layer``: GEMMs + attention), measured sum vs predicted sum. Errors of separate ops partly
    cancel here, as they do in a real step."""
    g_t, a_t = test["gemm"], test["attn"]
    out = []
    groups = sorted({(str(g), str(k)) for g, k in zip(g_t["gpu"], g_t["group"])
                     if k != "-" and not str(k).endswith("lm_head")})
    for gpu, group in groups:
        spec, c = GPUS[gpu], coeffs[gpu]
        sub = g_t.where((g_t["gpu"] == gpu) & (g_t["group"] == group))
        model = str(sub["model"][0])
        att = a_t.where((a_t["gpu"] == gpu) & (a_t["group"] == group))
        att_tokens = att["p_seqs"] * att["p_new"] + att["d_seqs"]
        att_pred = vec_attn(spec, c, att) if len(att) else np.zeros(0)
        for m in sorted(set(sub["m"])):
            ops = sub.where(sub["m"] == m)
            shapes = sorted({(n, k) for n, k in zip(ops["n"], ops["k"])})
            if len(shapes) < 2:
                continue
            meas = sum(float(np.median(ops["time_s"][(ops["n"] == n) & (ops["k"] == k)]))
                       for n, k in shapes)
            pred = sum(float(vec_gemm(spec, c, np.array([m]), n, k)[0]) for n, k in shapes)
            out.append(("layer_gemm", gpu, model, pred, meas))
            idx = np.nonzero(att_tokens == m)[0]
            for i in idx[:: max(1, len(idx) // 20)]:
                out.append(("layer", gpu, model, pred + float(att_pred[i]), meas + float(att["time_s"][i])))
    return out


def heldout(tables: dict[str, Table]) -> tuple[dict[str, Any], dict[str, Any], list]:
    """Held-out-model report, unseen-GPU report, and the scored rows (for the plot)."""
    train, test = _split(tables)
    gpus = measured_gpus(tables)
    raw = {g: fit_gpu(train, g, PRIOR) for g in gpus}
    has = {g: ops_measured(train, g) for g in gpus}
    filled = _fill(raw, has)
    rows = _score(test, filled)
    layers = _summarise(layer_composites(test, filled))
    unseen_rows, unseen_layers, per_gpu = [], [], {}
    for g in gpus:
        others = _fill(raw, has, exclude=g)
        sub = {op: t.where(t["gpu"] == g) for op, t in test.items()}
        r = _score(sub, others)
        unseen_rows += r
        unseen_layers += layer_composites(sub, others)
        per_gpu[g] = _summarise(r)["overall"] if r else {}
    unseen = _summarise(unseen_rows)
    held = _summarise(rows)
    held["layer_level"] = layers
    held["by_gpu_source"] = _by_source(rows)
    return held, {"overall": unseen.get("overall", {}), "by_op": unseen.get("by_op", {}),
                  "by_gpu": per_gpu, "named_models": unseen.get("named_models", {}),
                  "by_gpu_source": _by_source(unseen_rows),
                  "layer_level": _summarise(unseen_layers)}, rows


def kv_capacity() -> dict[str, Any]:
    from sluice.perf.registry import build_perf_model

    ref = json.loads((DATA / "kv_reference.json").read_text())
    out = []
    for r in ref["runs"]:
        m = build_perf_model(r["model"], r["gpu"], tp=r["tp"], max_num_seqs=r["max_num_seqs"],
                             max_num_batched_tokens=r["max_num_batched_tokens"])
        b = m.kv_capacity_blocks(16)
        out.append({"model": r["model"], "gpu": r["gpu"], "tp": r["tp"],
                    "max_num_batched_tokens": r["max_num_batched_tokens"], "predicted": b,
                    "measured": r["total_kv_blocks"],
                    "error_pct": round(100.0 * (b / r["total_kv_blocks"] - 1.0), 2)})
    return {"runs": out, "max_abs_error_pct": max(abs(x["error_pct"]) for x in out)}


def splitwise_steps(kind: str = "fitted") -> dict[str, Any]:
    """Static-batch Llama-2-70B prefill and decode-iteration times (Splitwise, A100/H100)."""
    from sluice.core.plan import BatchStats
    from sluice.perf.registry import build_perf_model

    path = MEASURED / "splitwise_steps.csv.gz"
    with gzip.open(path, "rt", newline="") as f:
        rows = list(csv.DictReader(f))
    models: dict[tuple[str, int], Any] = {}
    pre, dec = [], []
    for r in rows:
        key = (r["gpu"], int(r["tp"]))
        if key not in models:
            models[key] = build_perf_model("llama-2-70b", key[0], tp=key[1], kind=kind)
        m = models[key]
        b, p, n = int(r["batch"]), int(r["prompt"]), int(r["tokens"])
        tp_ = m.step_time(BatchStats(prefill_tokens=b * p, prefill_seqs=b, prefill_attn=b * p * (p + 1) / 2))
        td = m.step_time(BatchStats(decode_seqs=b, decode_ctx=b * (p + n // 2)))
        pre.append(tp_ / float(r["prompt_time_s"]))
        dec.append(td / float(r["token_time_s"]))
    a, d = np.array(pre), np.array(dec)
    return {"prefill": {"mape": _mape(np.abs(a - 1)), "median_ratio": round(float(np.median(a)), 3)},
            "decode": {"mape": _mape(np.abs(d - 1)), "median_ratio": round(float(np.median(d)), 3)},
            "n": len(rows), "note": "engine of the Splitwise profiles is not named upstream (2023)"}


# ---- end to end ------------------------------------------------------------------------------
_RUNS = {"RTX4090/Llama-3.1-8B": ("llama-3.1-8b", "rtx-4090", "llama-3.1-8b"),
         "RTXPRO6000/Llama-3.1-8B": ("llama-3.1-8b", "rtx-pro-6000", "llama-3.1-8b"),
         "RTXPRO6000/Qwen3-32B": ("qwen3-32b", "rtx-pro-6000", "qwen3-32b"),
         "RTXPRO6000/Qwen3-30B-A3B-Instruct-2507": ("qwen3-30b-a3b", "rtx-pro-6000", "qwen3-30b-a3b")}


def extract_e2e(shared: Path, dest: Path = E2E) -> int:
    """Copy the measured per-request latencies and the replayed workloads (validation only)."""
    base = shared / "groundtruth" / "llmservingsim" / "bench"
    dest.mkdir(parents=True, exist_ok=True)
    runs = []
    for run, (model, gpu, wl) in _RUNS.items():
        meta = json.loads((base / "runs" / run / "vllm" / "meta.json").read_text())
        ek = meta["engine_kwargs"]
        reqs = [json.loads(x) for x in (base / "runs" / run / "vllm" / "requests.jsonl").open()]
        runs.append({"run": run, "model": model, "gpu": gpu, "tp": ek["tensor_parallel_size"],
                     "dp": ek.get("data_parallel_size", 1),
                     "expert_parallel": bool(ek.get("enable_expert_parallel")),
                     "max_num_seqs": ek["max_num_seqs"],
                     "max_num_batched_tokens": ek["max_num_batched_tokens"],
                     "workload": _copy_workload(base / "workloads" / f"sharegpt-{wl}-300-sps10.jsonl.gz",
                                                dest),
                     "vllm_version": meta.get("vllm_version"),
                     "num_gpu_blocks": (meta.get("kv_cache") or {}).get("num_gpu_blocks"),
                     "requests": [[r["output_toks"], r["queued_ts"], r["first_token_ts"],
                                   r["last_token_ts"]] for r in reqs]})
    (dest / "runs.json").write_text(json.dumps(runs) + "\n")
    return len(runs)


def _copy_workload(src: Path, dest: Path) -> str:
    """Copy a workload once under a content-hash name (two runs replay the same file)."""
    digest = hashlib.sha256(gzip.decompress(src.read_bytes())).hexdigest()[:12]
    name = f"workload-{digest}.jsonl.gz"
    if not (dest / name).exists():
        shutil.copyfile(src, dest / name)
    return name


def _measured(reqs: list[list[float]]) -> dict[str, np.ndarray]:
    a = np.array(reqs, dtype=np.float64)
    out_toks, q, ft, lt = a.T
    m = out_toks > 1
    return {"ttft": (ft - q) * 1e3, "tpot": ((lt - ft)[m] / (out_toks[m] - 1)) * 1e3,
            "e2e": (lt - q) * 1e3}


def _simulate(run: dict[str, Any], kind: str) -> tuple[dict[str, np.ndarray], str]:
    """Replay one run; returns the simulated latencies and the DP model used. DP ranks of an
    MoE model run in lock step with vLLM's load balancer (``sim.lockstep``)."""
    from sluice.core.content import Content
    from sluice.core.request import Request
    from sluice.perf.registry import build_perf_model
    from sluice.sim.runner import SimConfig, run_simulation
    from sluice.workload.base import ListWorkload

    with gzip.open(E2E / run["workload"], "rt") as f:
        wl = [json.loads(x) for x in f]
    dp = run["dp"]
    ep = dp if run["expert_parallel"] else 1
    reqs = [Request(i, r["arrival_time_ns"] / 1e9, Content(tokens=r["input_tok_ids"]),
                    max_tokens=r["output_toks"], true_output=r["output_toks"])
            for i, r in enumerate(wl)]
    perf = build_perf_model(run["model"], run["gpu"], tp=run["tp"], kind=kind, ep=ep,
                            max_num_batched_tokens=run["max_num_batched_tokens"],
                            max_num_seqs=run["max_num_seqs"])
    cfg = SimConfig(model=run["model"], gpu=run["gpu"], tp=run["tp"], policy="vllm", seed=0,
                    max_num_seqs=run["max_num_seqs"],
                    max_num_batched_tokens=run["max_num_batched_tokens"], block_size=16,
                    enable_prefix_caching=True, perf_kind=kind, perf=perf, dp=dp,
                    expert_parallel=run["expert_parallel"])
    recs = run_simulation(cfg, ListWorkload(reqs)).records
    ttft = np.array([r.first_token - r.arrival for r in recs]) * 1e3
    e2e = np.array([r.finish - r.arrival for r in recs]) * 1e3
    tpot = np.array([(r.finish - r.first_token) / (r.output_tokens - 1)
                     for r in recs if r.output_tokens > 1]) * 1e3
    dp_model = f"lockstep x{dp}, vLLM DP load balancer" if dp > 1 else "single replica"
    return {"ttft": ttft, "tpot": tpot, "e2e": e2e}, dp_model


def end_to_end(kind: str = "fitted") -> dict[str, Any]:
    path = E2E / "runs.json"
    if not path.is_file():
        return {"skipped": "no end-to-end data shipped (run `sluice perf fit --shared DIR`)"}
    try:
        import sluice.sim.runner  # noqa: F401
    except ImportError as e:
        return {"skipped": f"simulator not available: {e}"}
    out = {}
    for run in json.loads(path.read_text()):
        meas, (sim, dp_model) = _measured(run["requests"]), _simulate(run, kind)
        row: dict[str, Any] = {"model": run["model"], "gpu": run["gpu"], "tp": run["tp"],
                               "dp": run["dp"], "dp_model": dp_model}
        for k in ("ttft", "tpot", "e2e"):
            mm, sm = float(np.mean(meas[k])), float(np.mean(sim[k]))
            mp, sp = float(np.percentile(meas[k], 90)), float(np.percentile(sim[k], 90))
            row[k] = {"measured_mean_ms": round(mm, 1), "sim_mean_ms": round(sm, 1),
                      "mean_err_pct": round(100 * (sm / mm - 1), 1),
                      "measured_p90_ms": round(mp, 1), "sim_p90_ms": round(sp, 1),
                      "p90_err_pct": round(100 * (sp / mp - 1), 1)}
        out[run["run"]] = row
    return out


def run_validate(e2e: bool = True) -> tuple[dict[str, Any], list]:
    tables = load_tables()
    held, unseen, rows = heldout(tables)
    report = {"heldout_models": held, "unseen_gpu": unseen, "kv_capacity": kv_capacity(),
              "splitwise_steps": splitwise_steps(),
              "split": {"test_models": sorted(TEST_MODELS),
                        "grid_test_fraction": GRID_TEST_FRACTION}}
    if e2e:
        report["end_to_end"] = end_to_end()
    return report, rows
