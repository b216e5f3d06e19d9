"""Superseded results against their reruns: what the correctness fixes changed in the published rows.

    python benchmarks/compare_reruns.py [--results-dir benchmarks/results/full]

A result whose allocation changed with a fix is moved to `<results-dir>/superseded/` and its experiment
run again (`python benchmarks/run.py --profile full` runs exactly the experiments without a result). This
prints, per moved experiment, the old and new main metric, how many modules changed rank and the largest
module's share of all ranks before and after, as a Markdown table, then the reruns still pending.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def largest_share(ranks: dict[str, int]) -> float:
    """The biggest module's share of all ranks (0 for an empty allocation)."""
    total = sum(ranks.values())
    return max(ranks.values()) / total if total else 0.0


def changed_modules(old: dict[str, int], new: dict[str, int]) -> int:
    """Modules whose rank differs (a module absent from one side has rank 0 there)."""
    return sum(old.get(name, 0) != new.get(name, 0) for name in set(old) | set(new))


def compare(results_dir: Path) -> tuple[list[str], list[str]]:
    """(table lines, names of experiments not rerun yet)."""
    lines = ["| experiment | old | rerun | modules whose rank changed | largest module share old -> new |"]
    lines.append("|---|---:|---:|---:|---|")
    pending = []
    for old_path in sorted((results_dir / "superseded").glob("*.json")):
        new_path = results_dir / old_path.name
        if not new_path.exists():
            pending.append(old_path.stem)
            continue
        old, new = json.loads(old_path.read_text()), json.loads(new_path.read_text())
        metric = new["main_metric"]
        lines.append(
            f"| `{old_path.stem}` | {old['validation'][metric]:.3f} | {new['validation'][metric]:.3f} "
            f"| {changed_modules(old['ranks'], new['ranks'])} "
            f"| {largest_share(old['ranks']):.1%} -> {largest_share(new['ranks']):.1%} |"
        )
    return lines, pending


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path, default=HERE / "results" / "full")
    args = parser.parse_args(argv)
    lines, pending = compare(args.results_dir)
    print("\n".join(lines))
    print(f"\n{len(pending)} reruns pending" + (": " + ", ".join(pending) if pending else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
