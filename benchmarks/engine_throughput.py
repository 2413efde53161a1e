"""sluice's real engine vs transformers ``generate()`` with static batching, same machine/model.

A seeded batch of requests with mixed prompt and output lengths arrives at once. sluice runs it
through Scheduler + KVCache + TorchExecutor (continuous batching, chunked prefill, paged KV);
the baseline runs transformers ``generate`` on fixed batches of ``--hf-batch`` left-padded
prompts, each batch generating as many tokens as its longest request needs (the static-batching
cost: short requests wait for long ones). Both ignore EOS so they produce exactly each
request's ``max_tokens``; useful output tokens are counted the same way for both.

Also reported: the share of sluice's step time spent in the scheduler (schedule + update) in a
decode-heavy run with ``--sched-batch`` concurrent sequences (target <= 5 % at 32, tiny model).

    .venv/bin/python benchmarks/engine_throughput.py --model tiny [--device cuda] [--json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from sluice.core.config import SchedulerConfig
from sluice.core.content import Content
from sluice.core.engine import Engine
from sluice.core.kv import KVCache
from sluice.core.request import Request
from sluice.core.scheduler import Scheduler
from sluice.executors.torch.executor import TorchExecutor
from sluice.executors.torch.prepare import prepare
from sluice.executors.torch.sampling import SamplingParams
from sluice.policies.base import make_policy


def workload(n: int, vocab: int, seed: int, prompt: tuple[int, int], out: tuple[int, int]
             ) -> list[tuple[list[int], int]]:
    rng = np.random.default_rng(seed)
    jobs = []
    for _ in range(n):
        p = int(rng.integers(prompt[0], prompt[1] + 1))
        m = int(rng.integers(out[0], out[1] + 1))
        jobs.append((rng.integers(3, vocab, size=p).tolist(), m))
    return jobs


def build_engine(model_dir, args, max_num_seqs: int) -> tuple[Engine, TorchExecutor]:
    ex = TorchExecutor(model_dir, device=args.device, dtype=args.dtype,
                       num_gpu_blocks=args.num_blocks, block_size=args.block_size)
    cfg = SchedulerConfig(block_size=args.block_size, max_num_seqs=max_num_seqs,
                          max_num_batched_tokens=args.max_batched_tokens,
                          max_model_len=ex.max_model_len)
    kv = KVCache(args.num_blocks, args.block_size)
    return Engine(Scheduler(cfg, make_policy("vllm"), kv, num_layers=ex.num_layers), ex), ex


def run_sluice(model_dir, jobs, args, max_num_seqs: int) -> dict:
    engine, ex = build_engine(model_dir, args, max_num_seqs)
    sp = SamplingParams(temperature=0.0, ignore_eos=True)
    reqs = [Request(id=i, arrival=0.0, content=Content(tokens=p), max_tokens=m, sampling=sp)
            for i, (p, m) in enumerate(jobs)]
    sched_s = exec_s = 0.0
    t0 = time.perf_counter()
    for r in reqs:
        engine.add_request(r, 0.0)
    steps = 0
    while engine.has_work:
        steps += 1
        a = time.perf_counter()
        plan = engine.scheduler.schedule(a - t0)
        b = time.perf_counter()
        result = ex.execute(plan)
        c = time.perf_counter()
        engine.scheduler.update(plan, result, c - t0)
        d = time.perf_counter()
        sched_s += (b - a) + (d - c)
        exec_s += c - b
    wall = time.perf_counter() - t0
    out_tokens = sum(r.num_output for r in reqs)
    ttft = np.array([r.first_token - r.arrival for r in reqs])
    return {"wall_s": wall, "output_tokens": out_tokens, "output_tok_s": out_tokens / wall,
            "mean_ttft_s": float(ttft.mean()), "p99_ttft_s": float(np.percentile(ttft, 99)),
            "scheduler_share": sched_s / (sched_s + exec_s), "steps": steps}


class _FirstToken:
    """Logits processor that notes when the first decoding step of a batch begins."""

    def __init__(self) -> None:
        self.at: float | None = None

    def __call__(self, input_ids, scores):
        if self.at is None:
            self.at = time.perf_counter()
        return scores


def run_hf(model_dir, jobs, args) -> dict:
    from transformers import AutoModelForCausalLM, LogitsProcessorList

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16,
             "float16": torch.float16}[args.dtype]
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to(args.device)
    model.eval()
    model.generation_config.eos_token_id = None
    pad = 0
    ttfts: list[float] = []
    useful = 0
    t0 = time.perf_counter()
    for k in range(0, len(jobs), args.hf_batch):
        batch = jobs[k:k + args.hf_batch]
        width = max(len(p) for p, _ in batch)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p, _ in batch], device=args.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p, _ in batch],
                            device=args.device)
        first = _FirstToken()
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                           max_new_tokens=max(m for _, m in batch), pad_token_id=pad,
                           logits_processor=LogitsProcessorList([first]))
        ttfts += [first.at - t0] * len(batch)
        useful += sum(m for _, m in batch)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "output_tokens": useful, "output_tok_s": useful / wall,
            "mean_ttft_s": float(np.mean(ttfts)), "p99_ttft_s": float(np.percentile(ttfts, 99))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny", help="tiny, smollm2-135m or a model directory")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--num-requests", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, nargs=2, default=(16, 512))
    ap.add_argument("--output-len", type=int, nargs=2, default=(8, 256))
    ap.add_argument("--hf-batch", type=int, default=16, help="static batch size of the baseline")
    ap.add_argument("--max-num-seqs", type=int, default=64)
    ap.add_argument("--max-batched-tokens", type=int, default=2048)
    ap.add_argument("--sched-batch", type=int, default=32)
    ap.add_argument("--num-blocks", type=int, default=4096)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = prepare(args.model) if args.model in ("tiny", "smollm2-135m") else args.model
    vocab = TorchExecutor(model_dir, num_gpu_blocks=1).config.vocab_size
    jobs = workload(args.num_requests, vocab, args.seed, tuple(args.prompt_len),
                    tuple(args.output_len))
    sluice = run_sluice(model_dir, jobs, args, args.max_num_seqs)
    hf = run_hf(model_dir, jobs, args)
    decode_jobs = workload(args.sched_batch, vocab, args.seed + 1, (8, 32), (64, 64))
    sched = run_sluice(model_dir, decode_jobs, args, args.sched_batch)
    report = {"model": str(args.model), "device": args.device, "dtype": args.dtype,
              "threads": torch.get_num_threads(), "num_requests": args.num_requests,
              "sluice": sluice, "hf_static": hf,
              "throughput_ratio": sluice["output_tok_s"] / hf["output_tok_s"],
              "scheduler_share_at_batch": {"batch": args.sched_batch,
                                           "share": sched["scheduler_share"]}}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"model {args.model} on {args.device}/{args.dtype}, {args.num_requests} requests")
    for name, r in (("sluice", sluice), ("hf static", hf)):
        print(f"  {name:10s} {r['output_tok_s']:9.1f} out tok/s  mean TTFT "
              f"{r['mean_ttft_s']:.3f}s  p99 TTFT {r['p99_ttft_s']:.3f}s  ({r['wall_s']:.1f}s)")
    print(f"  throughput ratio sluice/hf: {report['throughput_ratio']:.2f}x")
    print(f"  scheduler share of step time at batch {args.sched_batch}: "
          f"{sched['scheduler_share'] * 100:.1f}%")


if __name__ == "__main__":
    main()
