"""The report's two figures as PNG bytes: the rank map and the per-layer metrics (matplotlib imported on use)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from senslora.reporting.figures import DPI, figure_png_bytes
from senslora.reporting.module_grid import ModuleGrid


def rank_map_size(num_rows: int, num_types: int) -> tuple[float, float]:
    """Rank map size in inches: (2.5 + 1.0 * types, 1.5 + 0.375 * rows)."""
    return 2.5 + 1.0 * num_types, 1.5 + 0.375 * num_rows


def metrics_figure_size(num_slots: int) -> tuple[float, float]:
    """Per-layer metrics figure size in inches: (min(30, max(8, 2 + 0.125 * slots)), 11)."""
    return min(30.0, max(8.0, 2.0 + 0.125 * num_slots)), 11.0


def _type_colors(types: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    palette = colormaps["tab10" if len(types) <= 10 else "tab20"]
    return {module_type: palette(index % palette.N) for index, module_type in enumerate(types)}


def plot_rank_map(grid: ModuleGrid, title: str) -> bytes:
    """PNG bytes of the rank map: rows = layers (top = layer 0), columns = types, colour and number = rank."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    num_rows, num_types = len(grid.row_labels), len(grid.types)
    values = np.full((num_rows, num_types), np.nan)
    column = {module_type: index for index, module_type in enumerate(grid.types)}
    for module in grid.modules:
        values[module.row, column[module.module_type]] = module.rank
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    norm = Normalize(vmin=low, vmax=high if high > low else low + 1.0)
    cmap = colormaps["viridis"].with_extremes(bad="white")

    figure = Figure(figsize=rank_map_size(num_rows, num_types), dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    for row in range(num_rows):
        for col in range(num_types):
            value = values[row, col]
            if not math.isnan(value):
                shade = norm(value)
                axes.text(
                    col,
                    row,
                    str(int(value)),
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="white" if shade < 0.6 else "black",
                )
    axes.set_xticks(range(num_types), labels=grid.types, rotation=30, ha="right", rotation_mode="anchor", fontsize=9)
    axes.set_yticks(range(num_rows), labels=grid.row_labels, fontsize=9)
    axes.set_xticks(np.arange(-0.5, num_types, 1.0), minor=True)
    axes.set_yticks(np.arange(-0.5, num_rows, 1.0), minor=True)
    axes.grid(which="minor", color="white", linewidth=1.5)
    axes.tick_params(which="minor", length=0)
    if grid.has_unindexed_row:
        axes.axhline(num_rows - 1.5, color="black", linewidth=1.5)
    axes.set_ylabel("layer")
    axes.set_title(title, fontsize=10)
    colorbar = figure.colorbar(image, ax=axes, fraction=0.04, pad=0.02)
    colorbar.set_label("LoRA rank")
    if high - low <= 12:
        colorbar.set_ticks(range(int(low), int(high) + 1))
    return figure_png_bytes(figure)


def metric_slots(grid: ModuleGrid) -> list[tuple[float, int, str]]:
    """Bar positions (x, row, type): one slot per indexed type in each layer row, one per unindexed type in
    the "no layer" row, and one empty slot between groups."""
    slots: list[tuple[float, int, str]] = []
    position = 0.0
    for row in range(len(grid.row_labels)):
        unindexed_row = grid.has_unindexed_row and row == len(grid.row_labels) - 1
        for module_type in grid.unindexed_types if unindexed_row else grid.indexed_types:
            slots.append((position, row, module_type))
            position += 1.0
        position += 1.0
    return slots


def plot_metrics_by_layer(grid: ModuleGrid, title: str) -> bytes:
    """PNG bytes of four stacked bar charts (trace, top-k, effective rank, theta) per layer and type."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    slots = metric_slots(grid)
    num_groups = len(grid.row_labels)
    colors = _type_colors(grid.types)
    figure = Figure(figsize=metrics_figure_size(len(slots) + num_groups), dpi=DPI, layout="constrained")
    panels = (
        ("trace", "trace (S_global)"),
        ("topk", "top-k mean (S_topk)"),
        ("effective_rank", "effective rank (S_eff)"),
        ("theta", "theta (fused score)"),
    )
    axes_list = figure.subplots(len(panels), 1, sharex=True)
    group_centres = []
    for row in range(num_groups):
        positions = [x for x, slot_row, _ in slots if slot_row == row]
        group_centres.append(sum(positions) / len(positions) if positions else 0.0)
    for axes, (field_name, label) in zip(axes_list, panels, strict=True):
        xs, heights, bar_colors = [], [], []
        for x, row, module_type in slots:
            module = grid.cell(row, module_type)
            if module is None:
                continue
            xs.append(x)
            heights.append(float(module.values()[field_name]))
            bar_colors.append(colors[module_type])
        axes.bar(xs, heights, width=0.9, color=bar_colors)
        axes.set_ylabel(label, fontsize=9)
        axes.grid(True, axis="y", color="0.9")
        axes.set_axisbelow(True)
        axes.tick_params(axis="y", labelsize=8)
    axes_list[-1].set_xticks(group_centres, labels=grid.row_labels, fontsize=9)
    axes_list[-1].set_xlabel("layer")
    legend = [Patch(color=colors[module_type], label=module_type) for module_type in grid.types]
    columns = max(1, min(len(legend), int(figure.get_figwidth() / 1.75)))
    figure.legend(handles=legend, loc="outside lower center", ncols=columns, fontsize=9, frameon=False)
    figure.suptitle(title, fontsize=11)
    return figure_png_bytes(figure)
