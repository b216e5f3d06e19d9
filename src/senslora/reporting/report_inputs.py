"""What a report is made from: a run directory, a sensitivity.json or a ranks.json, read (and ranked) once."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from senslora.core.allocation import allocate_ranks
from senslora.core.allocation_result import RANKS_FORMAT, Allocation
from senslora.core.artifacts import RANKS_FILE, SENSITIVITY_FILE, read_json_file
from senslora.core.metrics import SENSITIVITY_FORMAT, ModuleSensitivity, sensitivities_from_json
from senslora.utils.io import read_text

CONFIG_FILES = ("config.json", "config.yaml", "config.yml")
DEFAULT_AVG_RANK = 4.0


@dataclass(frozen=True)
class ReportInputs:
    """What a report is made from.

    Attributes:
        source: the path given.
        sensitivities: per-module metrics, or None when only ranks.json is known.
        sensitivity_metadata: free-form metadata of sensitivity.json (estimator, ...).
        allocation: the ranks (read, or computed for the report).
        allocation_computed: True when the ranks were computed from the sensitivities for the report.
        config_name, config_text: the run's configuration file, verbatim, if there is one.
        files_read: names of the files read (no directories, so a report does not depend on where it lies).
    """

    source: Path
    sensitivities: dict[str, ModuleSensitivity] | None
    sensitivity_metadata: dict[str, Any]
    allocation: Allocation
    allocation_computed: bool
    config_name: str | None = None
    config_text: str | None = None
    files_read: tuple[str, ...] = ()


# The report puts the path before every error, a read error included, where core.artifacts'
# load_sensitivity_file / load_ranks_file say "sensitivity file '<path>': ..."; keeping the report's messages
# as they are, these two wrap the same pieces (read_text, read_json_file, the format parsers) themselves.
def _parse_sensitivity(path: Path) -> tuple[dict[str, ModuleSensitivity], dict[str, Any]]:
    try:
        return sensitivities_from_json(read_text(path, "sensitivity file"))
    except ValueError as error:
        raise ValueError(f"{str(path)!r}: {error}") from None


def _parse_ranks(path: Path) -> Allocation:
    try:
        return Allocation.from_dict(read_json_file(path, "ranks file"))
    except ValueError as error:
        raise ValueError(f"{str(path)!r}: {error}") from None


def load_report_inputs(source: str | os.PathLike[str], *, avg_rank: float = DEFAULT_AVG_RANK) -> ReportInputs:
    """Read a run directory, a sensitivity.json or a ranks.json; compute ranks if only metrics are given.

    Args:
        source: run directory (holding sensitivity.json and/or ranks.json) or one of those files.
        avg_rank: average rank used only when the ranks are computed here (no ranks.json).

    Raises:
        ValueError: missing path, a directory holding neither file, a file of another format, or a
            sensitivity and a ranks file that list different modules.
    """
    path = Path(source)
    if not path.exists():
        raise ValueError(
            f"report source {str(path)!r} does not exist; pass a run directory, sensitivity.json or ranks.json"
        )
    sensitivities: dict[str, ModuleSensitivity] | None = None
    metadata: dict[str, Any] = {}
    allocation: Allocation | None = None
    config_name = config_text = None
    files_read: list[str] = []
    if path.is_dir():
        if (path / SENSITIVITY_FILE).is_file():
            sensitivities, metadata = _parse_sensitivity(path / SENSITIVITY_FILE)
        if (path / RANKS_FILE).is_file():
            allocation = _parse_ranks(path / RANKS_FILE)
        if sensitivities is None and allocation is None:
            raise ValueError(f"directory {str(path)!r} holds neither {SENSITIVITY_FILE} nor {RANKS_FILE}")
        for name in CONFIG_FILES:
            if (path / name).is_file():
                config_name, config_text = name, read_text(path / name, "config file")
                break
        files_read = [name for name in (SENSITIVITY_FILE, RANKS_FILE, config_name) if name and (path / name).is_file()]
    else:
        document = read_json_file(path, "report source")
        kind = document.get("format") if isinstance(document, dict) else None
        if kind == SENSITIVITY_FORMAT:
            sensitivities, metadata = _parse_sensitivity(path)
        elif kind == RANKS_FORMAT:
            allocation = _parse_ranks(path)
        else:
            raise ValueError(
                f"{str(path)!r} is not a senslora sensitivity file ({SENSITIVITY_FORMAT!r}) "
                f"or ranks file ({RANKS_FORMAT!r})"
            )
        files_read = [path.name]
    computed = allocation is None
    if allocation is None:
        assert sensitivities is not None
        allocation = allocate_ranks(sensitivities, avg_rank=avg_rank)
    if sensitivities is not None and set(sensitivities) != set(allocation.ranks):
        only_metrics = sorted(set(sensitivities) - set(allocation.ranks))
        only_ranks = sorted(set(allocation.ranks) - set(sensitivities))
        raise ValueError(
            f"{SENSITIVITY_FILE} and {RANKS_FILE} list different modules (only in metrics: {only_metrics[:3]}, "
            f"only in ranks: {only_ranks[:3]}); they do not belong to the same run"
        )
    return ReportInputs(
        path, sensitivities, metadata, allocation, computed, config_name, config_text, tuple(files_read)
    )
