"""Sensitivity metrics of one weight matrix from the diagonal of its Hessian.

With lambda_1 >= ... >= lambda_m the diagonal entries of H_w, sorted:

- global:          S_global(w) = trace(H_w) = sum_i lambda_i
- local, top-k:    S_topk(w)   = mean of the k largest lambda_i, k = max(1, floor(m * topk_fraction))
- local, eff. rank: S_eff(w)   = min { k : sum_{j<=k} lambda_j / sum_j lambda_j >= alpha }  (0 if all are 0)

An estimated diagonal may hold negative entries (`hutchinson`: probe noise or negative curvature). The
trace then sums the entries as given and clamps only the module total, max(0, sum_i lambda_i), so that
an unbiased diagonal gives an unbiased trace (clamping each entry first biases it upward); top-k and
effective rank read the entries clamped at 0, max(0, lambda_i), and the share of negative entries is
reported as `clamped_fraction`. For a non-negative diagonal (`activation`, `fisher`) nothing changes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

# Cumulative sums are compared against alpha with this slack so that exact ratios such as 3/4 >= 0.75
# are not lost to rounding.
_ENERGY_TOLERANCE = 1e-12


def _as_sorted_desc(diagonal: Any) -> np.ndarray:
    values = np.asarray(diagonal, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError("the Hessian diagonal is empty: a weight matrix has at least one entry")
    if not np.all(np.isfinite(values)):
        raise ValueError("the Hessian diagonal holds NaN or inf")
    return np.sort(values)[::-1]


def _trace_of(values: np.ndarray) -> float:
    return max(0.0, float(values.sum()))


def trace_metric(diagonal: Any) -> float:
    """S_global = max(0, sum of the diagonal entries): negative entries count, only the total is clamped."""
    return _trace_of(_as_sorted_desc(diagonal))


def topk_count(num_entries: int, topk_fraction: float) -> int:
    """k = max(1, floor(m * topk_fraction)), capped at m."""
    if not 0.0 < topk_fraction <= 1.0:
        raise ValueError(f"topk_fraction must lie in (0, 1], got {topk_fraction}")
    return min(num_entries, max(1, math.floor(num_entries * topk_fraction)))


def _topk_of_sorted(ordered: np.ndarray, topk_fraction: float) -> float:
    return float(ordered[: topk_count(ordered.size, topk_fraction)].mean())


def _check_energy_threshold(energy_threshold: float) -> None:
    if not 0.0 < energy_threshold <= 1.0:
        raise ValueError(f"energy_threshold must lie in (0, 1], got {energy_threshold}")


def _effective_rank_of_sorted(ordered: np.ndarray, energy_threshold: float) -> int:
    total = ordered.sum()
    if total <= 0.0:
        return 0
    share = np.cumsum(ordered) / total
    return int(np.argmax(share >= energy_threshold - _ENERGY_TOLERANCE)) + 1


def topk_metric(diagonal: Any, topk_fraction: float = 0.5) -> float:
    """S_topk = mean of the k largest diagonal entries, each clamped at 0."""
    return _topk_of_sorted(_as_sorted_desc(diagonal).clip(min=0.0), topk_fraction)


def effective_rank_metric(diagonal: Any, energy_threshold: float = 0.85) -> int:
    """S_eff = the fewest largest entries (clamped at 0) whose sum reaches `energy_threshold` of their total.

    0 if every entry is 0 or below.
    """
    _check_energy_threshold(energy_threshold)
    return _effective_rank_of_sorted(_as_sorted_desc(diagonal).clip(min=0.0), energy_threshold)


@dataclass(frozen=True)
class ModuleSensitivity:
    """The sensitivity metrics of one adapted weight matrix.

    Attributes:
        name: full module name as in `model.named_modules()`.
        d_in, d_out: input and output features of the layer.
        trace: S_global, max(0, the sum of the Hessian diagonal entries as estimated).
        topk: S_topk, the mean of the k largest entries (clamped at 0).
        effective_rank: S_eff, the fewest entries (clamped at 0) holding `energy_threshold` of their sum.
        num_entries: m, how many diagonal entries the metrics were computed from
            (d_in for `activation`, d_in * d_out for `fisher` and `hutchinson`).
        clamped_fraction: share of entries that were negative and clamped to 0 for top-k and effective
            rank (only `hutchinson` estimates negative entries).
        spectrum: singular values of the mean calibration gradient, descending (`gradient_spectrum`
            only; then the diagonal was their squares); None otherwise, and absent from the JSON.
    """

    name: str
    d_in: int
    d_out: int
    trace: float
    topk: float
    effective_rank: int
    num_entries: int
    clamped_fraction: float = 0.0
    spectrum: tuple[float, ...] | None = None

    @classmethod
    def from_diagonal(
        cls,
        name: str,
        diagonal: Any,
        *,
        d_in: int,
        d_out: int,
        topk_fraction: float = 0.5,
        energy_threshold: float = 0.85,
    ) -> ModuleSensitivity:
        """Compute all three metrics of one module from an estimate of its Hessian diagonal.

        trace = max(0, sum_i lambda_i) over the entries as given (negative ones included); top-k and
        effective rank from max(0, lambda_i); clamped_fraction = the share of entries below 0.

        Raises:
            ValueError: an empty diagonal, NaN or inf entries (naming the module), or a fraction or
                threshold outside (0, 1].
        """
        values = np.asarray(diagonal, dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(values)):
            raise ValueError(f"module {name!r}: the Hessian diagonal holds NaN or inf")
        _check_energy_threshold(energy_threshold)
        ordered = _as_sorted_desc(values)  # sorted once for all three metrics (large for fisher/hutchinson)
        clamped = ordered.clip(min=0.0)
        return cls(
            name=name,
            d_in=int(d_in),
            d_out=int(d_out),
            trace=_trace_of(ordered),
            topk=_topk_of_sorted(clamped, topk_fraction),
            effective_rank=_effective_rank_of_sorted(clamped, energy_threshold),
            num_entries=int(values.size),
            clamped_fraction=float(np.mean(values < 0.0)),
        )

    def to_dict(self) -> dict[str, Any]:
        document = asdict(self)
        if self.spectrum is None:
            del document["spectrum"]  # files of the other estimators stay as they were
        return document

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModuleSensitivity:
        known = {f.name for f in fields(cls)}
        missing = {"name", "d_in", "d_out", "trace", "topk", "effective_rank", "num_entries"} - set(data)
        if missing:
            raise ValueError(f"module sensitivity entry lacks the fields {sorted(missing)}")
        item = cls(**{key: value for key, value in data.items() if key in known})
        if item.spectrum is not None:
            item = replace(item, spectrum=spectrum_from_json(item.name, item.spectrum))
        item.check_finite()
        return item

    def check_finite(self) -> None:
        """Raise ValueError naming the module if a metric is NaN or inf."""
        for field_name in ("trace", "topk", "effective_rank"):
            if not math.isfinite(getattr(self, field_name)):
                raise ValueError(f"module {self.name!r}: metric {field_name} is not finite")


def spectrum_from_json(name: str, values: Any) -> tuple[float, ...]:
    """A stored `spectrum` as a tuple of finite, non-negative floats; ValueError naming the module."""
    if not isinstance(values, list | tuple) or not values:
        raise ValueError(f"module {name!r}: spectrum must be a non-empty list of numbers")
    try:
        spectrum = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"module {name!r}: spectrum must be a non-empty list of numbers") from None
    if not all(math.isfinite(v) and v >= 0 for v in spectrum):
        raise ValueError(f"module {name!r}: spectrum values must be finite and >= 0")
    return spectrum


SENSITIVITY_FORMAT = "senslora.sensitivity/1"


def sensitivities_to_json(
    sensitivities: Mapping[str, ModuleSensitivity], metadata: Mapping[str, Any] | None = None
) -> str:
    """Serialise sensitivities (and free-form metadata such as the estimator) to a JSON document."""
    document = {
        "format": SENSITIVITY_FORMAT,
        **(dict(metadata) if metadata else {}),
        "modules": [sensitivities[name].to_dict() for name in sensitivities],
    }
    return json.dumps(document, indent=2)


def sensitivities_from_json(text: str) -> tuple[dict[str, ModuleSensitivity], dict[str, Any]]:
    """Parse a document written by `sensitivities_to_json`; returns (sensitivities, metadata)."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON: {error}") from None
    if not isinstance(document, dict) or document.get("format") != SENSITIVITY_FORMAT:
        raise ValueError(f"not a senslora sensitivity file (expected format {SENSITIVITY_FORMAT!r})")
    modules = document.pop("modules", None)
    if not isinstance(modules, list) or not modules:
        raise ValueError("the sensitivity file lists no modules")
    result: dict[str, ModuleSensitivity] = {}
    for entry in modules:
        if not isinstance(entry, dict):
            raise ValueError("each module entry must be a JSON object")
        item = ModuleSensitivity.from_dict(entry)
        if item.name in result:
            raise ValueError(f"module {item.name!r} appears twice in the sensitivity file")
        result[item.name] = item
    document.pop("format")
    return result, document
