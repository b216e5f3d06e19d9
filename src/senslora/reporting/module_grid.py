"""The modules of a report as layer rows by module type columns: what the figures draw and the tables list."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from senslora.core.module_types import module_position, module_type_sort_key
from senslora.reporting.report_inputs import ReportInputs

NO_LAYER_LABEL = "no layer"


@dataclass(frozen=True)
class ModuleRow:
    """One line of the module table (metrics are None without sensitivities)."""

    name: str
    row: int
    layer: int | None
    module_type: str
    d_in: int
    d_out: int
    trace: float | None
    topk: float | None
    effective_rank: int | None
    theta: float
    rank: int

    @property
    def lora_params(self) -> int:
        """r * (d_in + d_out)."""
        return self.rank * (self.d_in + self.d_out)

    def values(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "layer": self.layer,
            "type": self.module_type,
            "d_in": self.d_in,
            "d_out": self.d_out,
            "trace": self.trace,
            "topk": self.topk,
            "effective_rank": self.effective_rank,
            "theta": self.theta,
            "rank": self.rank,
            "lora_params": self.lora_params,
        }


@dataclass(frozen=True)
class ModuleGrid:
    """Modules arranged as layer rows by type columns.

    Attributes:
        modules: every module, in display order (row, then type order, then name).
        row_labels: one label per row, top to bottom ("no layer" last if any module lacks an index).
        types: column order; types that occur with a layer index come first.
        indexed_types, unindexed_types: types occurring in layer rows / in the "no layer" row.
        has_unindexed_row: whether the last row is the "no layer" row.
    """

    modules: tuple[ModuleRow, ...]
    row_labels: tuple[str, ...]
    types: tuple[str, ...]
    indexed_types: tuple[str, ...]
    unindexed_types: tuple[str, ...]
    has_unindexed_row: bool

    def cell(self, row: int, module_type: str) -> ModuleRow | None:
        for module in self.modules:
            if module.row == row and module.module_type == module_type:
                return module
        return None


def _short_stack_labels(stacks: Sequence[str]) -> dict[str, str]:
    """Drop the dotted parts all stacks share at the front and back ("model.encoder.layers" -> "encoder")."""
    if len(stacks) < 2:
        return dict.fromkeys(stacks, "")
    split = [stack.split(".") for stack in stacks]
    front = 0
    while all(len(parts) > front + 1 and parts[front] == split[0][front] for parts in split):
        front += 1
    back = 0
    while all(len(parts) > front + back + 1 and parts[-1 - back] == split[0][-1 - back] for parts in split):
        back += 1
    labels = {stack: ".".join(parts[front : len(parts) - back]) for stack, parts in zip(stacks, split, strict=True)}
    return labels if len(set(labels.values())) == len(stacks) else {stack: stack for stack in stacks}


def build_module_grid(inputs: ReportInputs) -> ModuleGrid:
    """Place every module in a (layer row, type column) cell; a type shared by two modules of one cell
    falls back to their unshortened names, so no module is hidden."""
    allocation = inputs.allocation
    names = list(inputs.sensitivities) if inputs.sensitivities is not None else list(allocation.ranks)
    positions = {name: module_position(name) for name in names}
    types = {name: position.module_type for name, position in positions.items()}
    cells: dict[tuple[str, int | None, str], list[str]] = {}
    for name, position in positions.items():
        cells.setdefault((position.stack, position.layer, position.module_type), []).append(name)
    for members in cells.values():
        if len(members) > 1:
            for name in members:
                types[name] = positions[name].suffix if positions[name].layer is not None else name
    stacks = list(dict.fromkeys(p.stack for p in positions.values() if p.layer is not None))
    stack_labels = _short_stack_labels(stacks)
    row_keys = sorted(
        {(p.stack, p.layer) for p in positions.values() if p.layer is not None},
        key=lambda key: (stacks.index(key[0]), key[1]),
    )
    labels = [f"{stack_labels[stack]} {layer}".strip() for stack, layer in row_keys]
    has_unindexed = any(p.layer is None for p in positions.values())
    if has_unindexed:
        labels.append(NO_LAYER_LABEL)
    row_of = {key: index for index, key in enumerate(row_keys)}
    rows: list[ModuleRow] = []
    for name, position in positions.items():
        metrics = inputs.sensitivities[name] if inputs.sensitivities is not None else None
        d_in, d_out = allocation.shapes[name]
        rows.append(
            ModuleRow(
                name=name,
                row=row_of[(position.stack, position.layer)] if position.layer is not None else len(row_keys),
                layer=position.layer,
                module_type=types[name],
                d_in=d_in,
                d_out=d_out,
                trace=metrics.trace if metrics else None,
                topk=metrics.topk if metrics else None,
                effective_rank=metrics.effective_rank if metrics else None,
                theta=allocation.theta[name],
                rank=allocation.ranks[name],
            )
        )
    rows.sort(key=lambda m: (m.row, module_type_sort_key(m.module_type), m.name))
    indexed = sorted({m.module_type for m in rows if m.layer is not None}, key=module_type_sort_key)
    unindexed = sorted({m.module_type for m in rows if m.layer is None}, key=module_type_sort_key)
    columns = indexed + [t for t in unindexed if t not in indexed]
    return ModuleGrid(tuple(rows), tuple(labels), tuple(columns), tuple(indexed), tuple(unindexed), has_unindexed)
