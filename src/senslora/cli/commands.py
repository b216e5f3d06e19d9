"""The `senslora` command line: parses options and calls the library; nothing else.

Exit codes: 0 success, 2 bad input (one line on stderr naming the input; argparse usage errors too),
3 training diverged (NaN/inf), 1 internal error (one line; set SENSLORA_DEBUG=1 for the traceback),
130 interrupted. Every input is checked before the expensive work it would spoil; docs/reliability.md
lists each input, its bad forms and the message.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, NoReturn

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_INTERNAL = 1
NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|nan)$", re.IGNORECASE)


def printable(text: str, stream: Any) -> str:
    """`text` with whatever `stream` cannot encode (e.g. lone surrogates from odd argv bytes) escaped."""
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        return text.encode(encoding, "backslashreplace").decode(encoding)
    except LookupError:
        return text.encode("ascii", "backslashreplace").decode("ascii")


def print_error(text: str) -> None:
    """One line on stderr."""
    print(printable(" ".join(text.split()), sys.stderr), file=sys.stderr)


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit code 2.

    Values such as `-1e-3` or `-inf` count as (negative) numbers, not as option names, so that a bad value
    reaches the range check that names it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = NEGATIVE_NUMBER

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {' '.join(message.split())} (see --help)\n")

    def _print_message(self, message: str, file: Any = None) -> None:
        if message:
            stream = file or sys.stderr
            super()._print_message(printable(message, stream), stream)


def _optional(parse):
    def parse_optional(text: str):
        return None if text.lower() in ("none", "null", "all") else parse(text)

    parse_optional.__name__ = parse.__name__
    return parse_optional


def shown_default(value: Any) -> str:
    """A default as it would be typed on the command line: none, a space-separated list, the value."""
    if value is None:
        return "none"
    if isinstance(value, list):
        return " ".join(str(item) for item in value)
    return str(value)


def _add_field(parser: argparse.ArgumentParser | Any, name: str) -> None:
    """One flag for RunConfig's field `name`: its type, choices, help text and default come from the field."""
    from senslora.finetune.config import RunConfig
    from senslora.finetune.options import base_type, default_of, field_types

    item = {f.name: f for f in fields(RunConfig)}[name]
    scalar, optional, is_list = base_type(field_types(RunConfig)[name])
    flag = "--" + name.replace("_", "-")
    kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS}
    help_text = item.metadata["help"]
    if "default" not in help_text:  # a help text that describes its own default keeps that description
        help_text += f" (default: {shown_default(default_of(item))})"
    if scalar is bool:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text, **kwargs)
        return
    parse = {int: int, float: float}.get(scalar, str)
    kwargs["type"] = _optional(parse) if optional else parse
    if item.metadata.get("choices"):
        kwargs["choices"] = list(item.metadata["choices"])
    if is_list:
        kwargs["nargs"] = "+"
    parser.add_argument(flag, help=help_text, **kwargs)


def _command(subparsers, name: str, help_text: str, groups: Sequence[tuple[str, Sequence[str]]]) -> ArgumentParser:
    """A subcommand with --config and, under one heading per group, a flag for each named option."""
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    parser.add_argument(
        "--config",
        dest="config_file",
        help="YAML or JSON file of options (flags override it); finetune passes any other "
        "transformers.TrainingArguments field in it to the Trainer",
    )
    for title, names in groups:
        section = parser.add_argument_group(title)
        for option_name in names:
            _add_field(section, option_name)
    return parser


def _option_groups() -> dict[str, list[str]]:
    """{heading: option names with a flag}, one entry per configuration group, in RunConfig's order."""
    from senslora.finetune.config import OPTION_GROUPS
    from senslora.finetune.options import flag_names

    return {_heading(group): flag_names(group) for group in OPTION_GROUPS}


def _heading(group: type) -> str:
    """DataOptions -> 'data options', TrainingConfig -> 'training options'."""
    words = re.sub(r"(?<!^)(?=[A-Z])", " ", group.__name__).lower().split()
    return " ".join(words[:-1]) + " options"


def build_parser() -> ArgumentParser:
    from senslora import __version__
    from senslora.cli.export_commands import add_export_command
    from senslora.cli.report_commands import add_report_commands

    parser = ArgumentParser(
        prog="senslora",
        description="Sensitivity-LoRA: per-module LoRA ranks from the Hessian diagonal, as stock PEFT adapters.",
    )
    parser.add_argument("--version", action="version", version=f"senslora {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    from senslora.finetune.config import COMMON_OPTIONS

    groups = _option_groups()
    data, calibration, allocation = groups["data options"], groups["calibration options"], groups["allocation options"]
    common = ("common options", list(COMMON_OPTIONS))
    sensitivity = _command(
        subparsers,
        "sensitivity",
        "model + calibration data -> sensitivity.json",
        [("data options", data), ("calibration options", calibration), common],
    )
    sensitivity.add_argument("--output", default="sensitivity.json", help="file to write (default: %(default)s)")
    _add_field(sensitivity, "overwrite")
    sensitivity.set_defaults(handler=run_sensitivity_command)

    allocate = _command(
        subparsers,
        "allocate",
        "sensitivity.json + budget -> ranks.json (no model)",
        [("allocation options", allocation)],
    )
    allocate.add_argument("sensitivity", help="a sensitivity.json written by `senslora sensitivity`")
    allocate.add_argument("--output", default="ranks.json", help="file to write (default: %(default)s)")
    _add_field(allocate, "overwrite")
    allocate.set_defaults(handler=run_allocate_command)

    finetune = _command(
        subparsers,
        "finetune",
        "model + data + method -> run directory with adapter, metrics and logs (defaults: the main job)",
        list(groups.items()),
    )
    finetune.set_defaults(handler=run_finetune_command)

    evaluate = _command(
        subparsers,
        "evaluate",
        "base model + PEFT adapter + data -> metrics",
        [
            ("data options", data),
            ("evaluation options", ["eval_batch_size", *groups["evaluation options"]]),
            common,
        ],
    )
    evaluate.add_argument("--adapter", required=True, help="PEFT adapter directory (e.g. RUN_DIR/adapter)")
    evaluate.add_argument(
        "--split",
        choices=("validation", "test"),
        default="validation",
        help="which split of the data to score: validation (chose the epoch and learning rate) or the held-out test",
    )
    evaluate.add_argument("--output", help="also write the metrics to this JSON file")
    _add_field(evaluate, "overwrite")
    evaluate.set_defaults(handler=run_evaluate_command)

    add_report_commands(subparsers)
    add_export_command(subparsers)
    return parser


def resolve_config(args: argparse.Namespace):
    """RunConfig from defaults, then the --config file, then the flags given."""
    from senslora.finetune.config import RunConfig
    from senslora.finetune.config_file import load_config_file

    values: dict[str, Any] = {}
    if getattr(args, "config_file", None):
        values.update(load_config_file(args.config_file))
    known = {f.name for f in fields(RunConfig)}
    values.update({k: v for k, v in vars(args).items() if k in known})
    config = RunConfig(**values)
    config.validate()
    return config


def _check_output_file(path: Path, overwrite: bool) -> None:
    """A file we may write: not a directory, not under a file, writable, and not replacing one silently."""
    from senslora.utils.io import check_output_path

    check_output_path(path, "output file")
    if path.exists() and not overwrite:
        raise ValueError(f"{path} already exists; pass --overwrite to replace it")


def run_sensitivity_command(args: argparse.Namespace) -> int:
    from senslora.core.metrics import sensitivities_to_json
    from senslora.finetune.preparation import (
        calibration_batches,
        load_calibration_data,
        load_data,
        memory_plan,
        prepare,
    )
    from senslora.finetune.rank_steps import run_sensitivity
    from senslora.utils.distributed import is_main_process, process_group
    from senslora.utils.io import atomic_write_text

    config = resolve_config(args)
    output = Path(args.output)
    _check_output_file(output, config.overwrite)
    data = load_data(config)
    calibration_data = load_calibration_data(config, data)
    with process_group():
        main = is_main_process()
        if not main:
            config = replace(config, progress=False)
        plan = memory_plan(config, data, training=False)  # from config.json alone, before any weights
        if plan is not None and main:
            print(plan.text(training=False))
        prepared = prepare(config, data)
        batches = calibration_batches(config, prepared, calibration_data)
        sensitivities, metadata = run_sensitivity(config, prepared, batches)
        if main:
            atomic_write_text(output, sensitivities_to_json(sensitivities, metadata))
            print(
                f"{len(sensitivities)} modules, {config.estimator} estimator, {metadata['seconds']:.1f} s -> {output}"
            )
    return 0


def run_allocate_command(args: argparse.Namespace) -> int:
    from senslora.core.artifacts import load_sensitivity_file
    from senslora.finetune.rank_steps import run_allocation
    from senslora.utils.io import atomic_write_json

    config = resolve_config(args)
    output = Path(args.output)
    _check_output_file(output, config.overwrite)
    sensitivities, metadata = load_sensitivity_file(args.sensitivity)
    allocation = run_allocation(config, sensitivities, estimator=metadata.get("estimator"))
    atomic_write_json(output, allocation.to_dict())
    ranks = allocation.ranks.values()
    print(
        f"{len(allocation.ranks)} modules, ranks {min(ranks)}..{max(ranks)}, {allocation.budget_used} of "
        f"{allocation.budget} {allocation.budget_unit} budget, {allocation.param_count:,} LoRA parameters -> {output}"
    )
    return 0


def run_finetune_command(args: argparse.Namespace) -> int:
    from senslora.finetune.pipeline import finetune
    from senslora.utils.distributed import is_main_process, process_group

    config = resolve_config(args)
    with process_group():  # under torchrun / accelerate launch: DDP, one adapter written by the main process
        metrics = finetune(config)
        if is_main_process():
            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics["validation"].items() if k != "loss")
            print(f"validation {shown} ({best_checkpoint_text(metrics)}); run directory: {config.run_dir()}")
    return 0


def best_checkpoint_text(metrics: dict) -> str:
    """Where the kept adapter was taken: "best at step 40, epoch 0.67" (the epoch to two decimals, since
    a run cut by --max-steps or evaluated every --eval-steps ends between epochs)."""
    step, epoch = metrics.get("best_step"), metrics.get("best_epoch")
    if step is None:
        return "best epoch unknown" if epoch is None else f"best at epoch {epoch:.2f}"
    return f"best at step {step}" + ("" if epoch is None else f", epoch {epoch:.2f}")


def run_evaluate_command(args: argparse.Namespace) -> int:
    from senslora.finetune.evaluation.saved_adapter import evaluate_adapter
    from senslora.utils.io import atomic_write_json

    config = resolve_config(args)
    if args.output:
        _check_output_file(Path(args.output), config.overwrite)
    metrics = evaluate_adapter(config, args.adapter, args.split)
    if args.output:
        atomic_write_json(args.output, metrics)
    print(json.dumps(metrics, indent=2))
    return 0


def interrupted_hint(args: argparse.Namespace) -> str:
    """What an interrupted command left: a finetune run directory to --resume, or nothing (every other
    output is written whole at the end, and a run stopped before its first result removes its directory)."""
    if args.command != "finetune":
        return "nothing was written"
    try:
        run_dir = resolve_config(args).run_dir()
    except ValueError:
        return "nothing was written"
    if (run_dir / "config.json").is_file():
        return f"the unfinished run in {run_dir} continues with --resume"
    return "no run directory was kept; run the command again"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `senslora` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from senslora.finetune.environment import quiet_libraries

    quiet_libraries()
    debug = os.environ.get("SENSLORA_DEBUG") == "1"
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        print_error(f"senslora: interrupted; {interrupted_hint(args)}")
        return 130
    except ValueError as error:
        if debug:
            raise
        from senslora.finetune.training.settings import TrainingDivergedError

        code = EXIT_DIVERGED if isinstance(error, TrainingDivergedError) else EXIT_USER_ERROR
        print_error(f"senslora {args.command}: error: {str(error) or type(error).__name__}")
        return code
    except OSError as error:  # a path the user gave: missing, unreadable, unwritable, full disk
        if debug:
            raise
        where = f" {str(error.filename)!r}" if error.filename else ""
        print_error(f"senslora {args.command}: error:{where} {error.strerror or error}")
        return EXIT_USER_ERROR
    except Exception as error:
        if debug:
            raise
        print_error(
            f"senslora {args.command}: internal error: {type(error).__name__}: {str(error)[:500]} "
            "(set SENSLORA_DEBUG=1 for the traceback)"
        )
        return EXIT_INTERNAL
