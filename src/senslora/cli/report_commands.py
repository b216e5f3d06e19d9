"""`senslora report` and `senslora compare`: argument parsing and printing only; the work is in
senslora.reporting.report and senslora.reporting.compare.

    senslora report RUN_DIR|sensitivity.json|ranks.json [--output-dir DIR] [--avg-rank R]
    senslora compare A B [--plot PATH] [--top N] [--json]

Each subcommand stores its handler as `handler` (args -> exit code); bad input raises ValueError.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from senslora.finetune.options import MAX_INT
from senslora.reporting.compare import DEFAULT_TOP, compare_allocations, load_allocation_like, plot_comparison
from senslora.reporting.kendall import tau_text
from senslora.reporting.report import DEFAULT_AVG_RANK, write_report


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _average_rank(text: str) -> float:
    """A finite average rank in (0, MAX_INT], the range `allocate` and `finetune` accept (as a float here)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value <= MAX_INT:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"expected a number in (0, {MAX_INT}], got {text!r}")
    return value


def add_report_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register the `report` and `compare` subcommands on an argparse subparsers object."""
    report = subparsers.add_parser(
        "report",
        help="write a rank map, per-layer metric plots and an HTML/markdown report of an allocation",
        description="Write rank_map.png, metrics_by_layer.png, report.html and report.md next to SOURCE.",
    )
    report.add_argument("source", metavar="SOURCE", help="run directory, sensitivity.json or ranks.json")
    report.add_argument("--output-dir", default=None, help="where to write (default: next to SOURCE)")
    report.add_argument(
        "--avg-rank",
        type=_average_rank,
        default=DEFAULT_AVG_RANK,
        help=f"average rank when ranks are computed from sensitivity.json alone (default: {DEFAULT_AVG_RANK:g})",
    )
    report.add_argument("--overwrite", action="store_true", help="replace report files already there")
    report.set_defaults(handler=run_report)

    compare = subparsers.add_parser(
        "compare",
        help="Kendall tau, share of changed ranks and largest changes between two allocations",
        description="Compare two allocations (ranks.json files or run directories holding one).",
    )
    compare.add_argument("first", metavar="A", help="ranks.json or run directory")
    compare.add_argument("second", metavar="B", help="ranks.json or run directory")
    compare.add_argument("--plot", default=None, metavar="PATH", help="also write a PNG of rank in A against B")
    compare.add_argument(
        "--top", type=_non_negative_int, default=DEFAULT_TOP, help=f"largest changes to list (default: {DEFAULT_TOP})"
    )
    compare.add_argument("--json", action="store_true", help="print the comparison as JSON")
    compare.add_argument("--overwrite", action="store_true", help="replace the --plot file if it exists")
    compare.set_defaults(handler=run_compare)


def run_report(args: argparse.Namespace) -> int:
    """Write the report and print the files written."""
    written = write_report(args.source, args.output_dir, avg_rank=args.avg_rank, overwrite=args.overwrite)
    print(f"wrote {len(written)} files:")
    for path in written:
        print(f"  {path}")
    return 0


UNDEFINED_TAU = "undefined (a side is constant or fewer than 2 common modules)"


def _tau_text(value: float) -> str:
    return tau_text(value, digits=4, undefined=UNDEFINED_TAU)


def run_compare(args: argparse.Namespace) -> int:
    """Print Kendall tau, the share of changed ranks and the largest changes (or JSON); optionally plot."""
    if args.plot and Path(args.plot).exists() and not args.overwrite:
        raise ValueError(f"{args.plot} already exists; pass --overwrite to replace it")
    first, second = load_allocation_like(args.first), load_allocation_like(args.second)
    comparison = compare_allocations(first, second, top=args.top)
    if args.plot:
        plot_comparison(first, second, args.plot)
    if args.json:
        print(json.dumps(comparison.to_dict(), indent=2))
        return 0
    print(
        f"modules: {comparison.num_common} common, {comparison.num_only_a} only in A, {comparison.num_only_b} only in B"
    )
    print(f"Kendall tau ({comparison.tau_basis}): {_tau_text(comparison.kendall_tau)}")
    if comparison.tau_basis != "rank":
        print(f"Kendall tau (rank): {_tau_text(comparison.kendall_tau_ranks)}")
    print(f"rank changed: {comparison.num_changed} of {comparison.num_common} ({comparison.changed_share:.1%})")
    if comparison.largest_changes:
        width = max(len("module"), *(len(name) for name, _, _ in comparison.largest_changes))
        print("largest changes:")
        print(f"  {'module':<{width}}  {'A':>4}  {'B':>4}  {'B-A':>4}")
        for name, rank_a, rank_b in comparison.largest_changes:
            print(f"  {name:<{width}}  {rank_a:>4}  {rank_b:>4}  {rank_b - rank_a:>+4}")
    if args.plot:
        print(f"wrote {args.plot}")
    return 0
