"""``sluice model prepare NAME [--dir D]``: the torch-side subcommand, wired in by sluice.cli.

Kept here so the top-level CLI imports nothing from torch until this subcommand runs.
"""

from __future__ import annotations

import argparse
import sys

from sluice.errors import SluiceError

MODEL_NAMES = ("tiny", "smollm2-135m")


def add_parser(subparsers: "argparse._SubParsersAction") -> None:
    """Add ``model`` (with its ``prepare`` action) to the top-level subparsers."""
    model = subparsers.add_parser("model", help="prepare local models for the real engine")
    actions = model.add_subparsers(dest="model_action", required=True)
    prep = actions.add_parser(
        "prepare", help="write a model directory offline (config.json, model.safetensors, "
                        "tokenizer.json)")
    prep.add_argument("name", help=f"model to prepare: {', '.join(MODEL_NAMES)}")
    prep.add_argument("--dir", default=None,
                      help="output directory (default: ./models/NAME); reused when complete")
    prep.add_argument("--force", action="store_true", help="rebuild even if already prepared")
    prep.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    """Run ``model prepare``; bad input prints one line and returns 2."""
    try:
        from sluice.executors.torch.prepare import prepare

        out = prepare(args.name, args.dir, force=getattr(args, "force", False))
    except SluiceError as e:
        print(f"sluice model prepare: error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0
