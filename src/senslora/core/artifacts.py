"""The method's two hand-off files, named and read in one place.

    sensitivity.json  {"format": "senslora.sensitivity/1", "modules": [...], <metadata>}  (metrics.py)
    ranks.json        {"format": "senslora.ranks/1", "modules": [...], <budget>}          (allocation.py)

A reader raises ValueError naming the file: `<what> '<path>': <what is wrong>`; a file that is missing,
unreadable or not JSON says so in the same form (`senslora.utils.io.read_text`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from senslora.core.allocation_result import Allocation
from senslora.core.metrics import ModuleSensitivity, sensitivities_from_json
from senslora.utils.io import read_text

SENSITIVITY_FILE = "sensitivity.json"
RANKS_FILE = "ranks.json"


def read_json_file(path: str | os.PathLike[str], what: str) -> Any:
    """The parsed JSON document of a file; ValueError `<what> '<path>' is not valid JSON: ...` otherwise."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{what} {str(path)!r} is not valid JSON: {error}") from None


def load_sensitivity_file(path: str | Path) -> tuple[dict[str, ModuleSensitivity], dict[str, Any]]:
    """Read a sensitivity.json; ValueError names the file and what is wrong with it."""
    text = read_text(path, "sensitivity file")
    try:
        return sensitivities_from_json(text)
    except ValueError as error:
        raise ValueError(f"sensitivity file {str(path)!r}: {error}") from None


def load_ranks_file(path: str | Path) -> Allocation:
    """Read a ranks.json; ValueError names the file and what is wrong with it."""
    text = read_text(path, "ranks file")
    try:
        return Allocation.from_json(text)
    except ValueError as error:
        raise ValueError(f"ranks file {str(path)!r}: {error}") from None
