"""Allocation: per-module LoRA ranks and how they were obtained, and its ranks.json form.

ranks.json (format "senslora.ranks/1") holds the budget (its unit, size and the part spent), the options,
the fusion weights and, per module, its rank, theta and shape; the trainable LoRA parameters are

    param_count = sum_w r(w) * (d_in + d_out)

Plain data: no model and no torch needed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

RANKS_FORMAT = "senslora.ranks/1"


@dataclass(frozen=True)
class Allocation:
    """Per-module LoRA ranks and how they were obtained (plain data, JSON round-trippable)."""

    ranks: dict[str, int]
    theta: dict[str, float]
    weights: dict[str, float]
    budget: int
    budget_unit: str
    budget_used: int
    avg_rank: float
    scheme: str
    weighting: str
    metrics: tuple[str, ...]
    min_rank: int
    max_rank: int | None
    shapes: dict[str, tuple[int, int]]
    uniform_fallback: bool = False
    num_groups: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def param_count(self) -> int:
        """Trainable LoRA parameters: sum over modules of r(w) * (d_in + d_out)."""
        return sum(r * (self.shapes[n][0] + self.shapes[n][1]) for n, r in self.ranks.items())

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": RANKS_FORMAT,
            "avg_rank": self.avg_rank,
            "budget": self.budget,
            "budget_unit": self.budget_unit,
            "budget_used": self.budget_used,
            "param_count": self.param_count,
            "scheme": self.scheme,
            "num_groups": self.num_groups,
            "weighting": self.weighting,
            "metrics": list(self.metrics),
            "min_rank": self.min_rank,
            "max_rank": self.max_rank,
            "weights": dict(self.weights),
            "uniform_fallback": self.uniform_fallback,
            "extra": dict(self.extra),
            "modules": [
                {
                    "name": name,
                    "rank": rank,
                    "theta": self.theta[name],
                    "d_in": self.shapes[name][0],
                    "d_out": self.shapes[name][1],
                }
                for name, rank in self.ranks.items()
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> Allocation:
        if not isinstance(document, Mapping) or document.get("format") != RANKS_FORMAT:
            raise ValueError(f"not a senslora ranks file (expected format {RANKS_FORMAT!r})")
        modules = document.get("modules")
        if not isinstance(modules, list) or not modules:
            raise ValueError("the ranks file lists no modules")
        try:
            ranks = {str(m["name"]): int(m["rank"]) for m in modules}
            theta = {str(m["name"]): float(m["theta"]) for m in modules}
            shapes = {str(m["name"]): (int(m["d_in"]), int(m["d_out"])) for m in modules}
            if len(ranks) != len(modules):
                raise ValueError("a module appears twice in the ranks file")
            if any(r < 0 for r in ranks.values()):
                raise ValueError("ranks must be non-negative integers")
            return cls(
                ranks=ranks,
                theta=theta,
                weights={str(k): float(v) for k, v in document.get("weights", {}).items()},
                budget=int(document["budget"]),
                budget_unit=str(document["budget_unit"]),
                budget_used=int(document["budget_used"]),
                avg_rank=float(document["avg_rank"]),
                scheme=str(document["scheme"]),
                weighting=str(document["weighting"]),
                metrics=tuple(document["metrics"]),
                min_rank=int(document["min_rank"]),
                max_rank=None if document.get("max_rank") is None else int(document["max_rank"]),
                shapes=shapes,
                uniform_fallback=bool(document.get("uniform_fallback", False)),
                num_groups=None if document.get("num_groups") is None else int(document["num_groups"]),
                extra=dict(document.get("extra", {})),
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"malformed ranks file: missing or wrong field {error}") from None

    @classmethod
    def from_json(cls, text: str) -> Allocation:
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"not valid JSON: {error}") from None
        return cls.from_dict(document)
