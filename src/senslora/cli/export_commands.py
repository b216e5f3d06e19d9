"""`senslora export`: argument parsing and printing only; the work is in senslora.finetune.export.

senslora export RANKS_OR_RUN --format {lora-config,adapter-init,axolotl,peft-dir} --out PATH
                [--bake-scale] [--merge] [--model M] [--task T] [--lora-alpha A] [--alpha-mode M]
                [--lora-dropout P] [--max-scale-error E]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from senslora.core.axolotl import DEFAULT_MAX_SCALE_ERROR
from senslora.core.peft_export import ALPHA_MODES
from senslora.finetune.export import FORMATS, ExportOptions, export, read_source
from senslora.finetune.methods import TASK_TYPES


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def add_export_command(subparsers: argparse._SubParsersAction) -> None:
    """Register the `export` subcommand on an argparse subparsers object."""
    parser = subparsers.add_parser(
        "export",
        help="write a ranks.json or a finished run as a LoraConfig, an untrained adapter, an Axolotl fragment "
        "or a (serving-safe, or merged) trained adapter",
        description="Export ranks or a finished run for other tools (docs/export.md: which runtime reads what).",
    )
    parser.add_argument("source", metavar="RANKS_OR_RUN", help="a ranks.json or a finished run directory")
    parser.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    parser.add_argument("--out", required=True, help="file (lora-config, axolotl) or directory to write; must be new")
    parser.add_argument(
        "--bake-scale",
        action="store_true",
        help="peft-dir: fold every module's scale into lora_B at one rank (read alike by PEFT, vLLM, llama.cpp)",
    )
    parser.add_argument("--merge", action="store_true", help="peft-dir: write the merged full model instead")
    parser.add_argument("--model", help="base model (default: the run's; a ranks.json needs it for adapter-init)")
    parser.add_argument("--task", choices=list(TASK_TYPES), help="task of the base model (default: the run's)")
    parser.add_argument("--lora-alpha", type=_positive, help="LoRA alpha at the average rank (default: the run's)")
    parser.add_argument("--alpha-mode", choices=ALPHA_MODES, help="scale or fixed (default: the run's)")
    parser.add_argument("--lora-dropout", type=_fraction, help="LoRA dropout (default: the run's)")
    parser.add_argument(
        "--max-scale-error",
        type=_fraction,
        default=DEFAULT_MAX_SCALE_ERROR,
        help="axolotl: largest relative scale change allowed from rounding alphas to integers (default: %(default)s)",
    )
    parser.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    """Check everything, write the export atomically, print one line."""
    options = ExportOptions(
        format=args.format,
        out=Path(args.out),
        model=args.model,
        task=args.task,
        lora_alpha=args.lora_alpha,
        alpha_mode=args.alpha_mode,
        lora_dropout=args.lora_dropout,
        bake_scale=args.bake_scale,
        merge=args.merge,
        max_scale_error=args.max_scale_error,
    )
    print(export(read_source(args.source), options))
    return 0
