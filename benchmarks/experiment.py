"""`Experiment`: one benchmark run, a named set of `RunConfig` overrides and the table it belongs to.

Its own module so that the profile lists (experiments.py) and the evidence beds (evidence.py) both import it
without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Experiment:
    """A named set of RunConfig overrides and the table it belongs to."""

    name: str
    group: str
    overrides: dict[str, Any] = field(default_factory=dict)
