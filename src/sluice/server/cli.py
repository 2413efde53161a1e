"""``sluice serve``: start the OpenAI-compatible server on a real model.

Why uvicorn's own signal handling: on SIGTERM uvicorn stops accepting connections, waits for
in-flight responses (streams included) to complete, then runs the app's lifespan shutdown,
where the runtime drains whatever is still queued. ``--drain-timeout`` bounds both.
"""

from __future__ import annotations

import argparse
import logging

from sluice.errors import ConfigError


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("serve", help="serve a model behind an OpenAI-compatible HTTP API")
    p.add_argument("--model", required=True, metavar="PATH|NAME",
                   help="Hugging Face model directory, or a prepared name under ./models "
                        "(tiny, smollm2-135m; prepared on first use)")
    p.add_argument("--served-model-name", default=None,
                   help="name clients put in `model` (default: NAME or the directory name)")
    p.add_argument("--policy", default="vllm", help="scheduling policy (or a+b composition)")
    p.add_argument("--policy-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="policy option (repeatable)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    p.add_argument("--num-gpu-blocks", type=int, default=1024,
                   help="KV cache blocks on the device (default 1024)")
    p.add_argument("--block-size", type=int, default=16, help="tokens per KV block")
    p.add_argument("--num-host-blocks", type=int, default=None,
                   help="host KV blocks for swap preemption (default: as many as the device "
                        "with --preemption-mode swap, else 0)")
    p.add_argument("--max-num-seqs", type=int, default=None)
    p.add_argument("--max-num-batched-tokens", type=int, default=None)
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--preemption-mode", choices=["recompute", "swap"], default=None)
    p.add_argument("--no-prefix-caching", dest="prefix_caching", action="store_false",
                   default=None)
    p.add_argument("--max-queue", type=int, default=1024,
                   help="waiting requests beyond which new ones get 429 + Retry-After")
    p.add_argument("--drain-timeout", type=float, default=30.0, metavar="S",
                   help="on SIGTERM, seconds to let in-flight requests finish")
    p.add_argument("--seed", type=int, default=0, help="sampling seed of unseeded requests")
    p.add_argument("--step-log", default=None, metavar="F",
                   help="append one JSON line per engine step and per request (for `sluice "
                        "perf calibrate` and `sluice bench --twin`)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch intra-op threads of the engine (default: torch's choice)")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=cmd_serve)
    return p


def config_from_args(args: argparse.Namespace):
    from sluice.cli import parse_policy_options
    from sluice.server.engine_factory import ServeConfig

    if args.max_queue < 1:
        raise ConfigError(f"--max-queue must be >= 1, got {args.max_queue}")
    return ServeConfig(
        model=args.model, policy=args.policy,
        policy_options=parse_policy_options(args.policy_opt, args.policy),
        served_model_name=args.served_model_name, device=args.device, dtype=args.dtype,
        num_gpu_blocks=args.num_gpu_blocks, block_size=args.block_size,
        num_host_blocks=args.num_host_blocks, max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens, max_model_len=args.max_model_len,
        preemption_mode=args.preemption_mode, enable_prefix_caching=args.prefix_caching,
        seed=args.seed, step_log=args.step_log, threads=args.threads)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from sluice.server.engine_factory import build_app, build_deployment

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    dep = build_deployment(config_from_args(args))
    app, _runtime = build_app(dep, max_queue=args.max_queue, drain_timeout=args.drain_timeout)
    logging.getLogger("sluice.server").info(
        "serving %s (%s) with policy %s on http://%s:%d", dep.name, dep.model_dir, args.policy,
        args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=int(args.drain_timeout) or None)
    return 0
