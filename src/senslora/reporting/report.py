"""A report of one allocation: rank map, per-layer metrics, the module table, the budget, the run's config.

`write_report(source)` reads a run directory (sensitivity.json and/or ranks.json, optionally config.json
or config.yaml), a sensitivity.json or a ranks.json, and writes next to it:

- rank_map.png: layers down, module types across, cell colour and number = rank; modules without a
  layer index in an extra bottom row ("no layer");
- metrics_by_layer.png: per layer, bars per module type of trace, top-k, effective rank and theta
  (skipped when only ranks.json is known: it holds theta but no metrics);
- report.html: self-contained (pictures as data: URIs, inline style, nothing fetched from a network);
- report.md: the same content, pictures referenced by relative file name.

Figure sizes (dpi 96; every size is a multiple of 1/8 inch, so pixels = 96 * inches exactly):
    rank map:   width  = 2.5 + 1.0 * types      inches, height = 1.5 + 0.375 * rows
    metrics:    width  = min(30, max(8, 2 + 0.125 * slots)) inches, height = 11
with rows = layer rows (+1 when a module has no layer index), types = distinct module types,
slots = layer rows * types with a layer index + types without one + number of bar groups.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from senslora.core.allocation import RANKS_FORMAT, Allocation, allocate_ranks
from senslora.core.artifacts import RANKS_FILE, SENSITIVITY_FILE, read_json_file
from senslora.core.metrics import SENSITIVITY_FORMAT, ModuleSensitivity, sensitivities_from_json
from senslora.core.module_types import module_position, module_type_sort_key
from senslora.reporting.figures import DPI, figure_png_bytes
from senslora.reporting.kendall import kendall_tau_b, tau_text
from senslora.utils.io import atomic_write_bytes, atomic_write_text, read_text

RANK_MAP_FILE = "rank_map.png"
METRICS_FILE = "metrics_by_layer.png"
HTML_FILE = "report.html"
MARKDOWN_FILE = "report.md"
CONFIG_FILES = ("config.json", "config.yaml", "config.yml")
DEFAULT_AVG_RANK = 4.0
NO_LAYER_LABEL = "no layer"
TABLE_COLUMNS = (
    "name",
    "layer",
    "type",
    "d_in",
    "d_out",
    "trace",
    "topk",
    "effective_rank",
    "theta",
    "rank",
    "lora_params",
)


def format_number(value: float | int | str | None) -> str:
    """Table formatting: integers and text as they are, floats to 6 significant digits, missing as empty."""
    if value is None:
        return ""
    if isinstance(value, int | str):
        return str(value)
    return f"{value:.6g}"


# ----------------------------------------------------------------------------------------------- inputs


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


# ------------------------------------------------------------------------------------------ module grid


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


# ------------------------------------------------------------------------------------------------ plots


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


# ---------------------------------------------------------------------------------------------- content


def _uniform_params(allocation: Allocation) -> float:
    return allocation.avg_rank * sum(d_in + d_out for d_in, d_out in allocation.shapes.values())


def summary_items(inputs: ReportInputs) -> list[tuple[str, str]]:
    """(label, value) lines on the budget and how the ranks were obtained."""
    allocation = inputs.allocation
    ranks = list(allocation.ranks.values())
    uniform = _uniform_params(allocation)
    items = [
        ("modules", str(len(ranks))),
        ("budget", f"{allocation.budget} ({allocation.budget_unit})"),
        ("budget_used", str(allocation.budget_used)),
        ("avg_rank", format_number(allocation.avg_rank)),
        ("scheme", allocation.scheme + (f" ({allocation.num_groups} groups)" if allocation.num_groups else "")),
        ("weighting", allocation.weighting),
        ("metrics in theta", ", ".join(allocation.metrics)),
        (
            "min_rank / max_rank",
            f"{allocation.min_rank} / {'none' if allocation.max_rank is None else allocation.max_rank}",
        ),
        ("ranks: min / mean / max", f"{min(ranks)} / {sum(ranks) / len(ranks):.3g} / {max(ranks)}"),
        ("modules without adapter (rank 0)", str(sum(1 for r in ranks if r == 0))),
        ("LoRA parameters", str(allocation.param_count)),
        (
            f"uniform LoRA parameters at rank {format_number(allocation.avg_rank)}",
            format_number(int(uniform) if float(uniform).is_integer() else uniform),
        ),
        ("parameters vs uniform", f"{allocation.param_count / uniform:.4f}" if uniform else "n/a"),
    ]
    if allocation.uniform_fallback:
        items.append(("uniform fallback", "yes: no metric was informative, every module got the same score"))
    for key, value in sorted(allocation.extra.items()):
        items.append((f"extra.{key}", json.dumps(value, sort_keys=True)))
    return items


def source_notes(inputs: ReportInputs) -> list[str]:
    """Sentences on where the numbers come from."""
    notes = []
    if inputs.allocation_computed:
        notes.append(
            "No ranks.json was given: the allocation was computed for this report with "
            f"allocate_ranks(avg_rank={format_number(inputs.allocation.avg_rank)}) and default options "
            "from the sensitivities."
        )
    if inputs.sensitivities is None:
        notes.append(
            "Only ranks.json was given: it holds theta but no sensitivity metrics, so the metric columns "
            "are empty and the per-layer metric figure is skipped."
        )
    return notes


def metric_agreement(inputs: ReportInputs) -> list[tuple[str, str, float]]:
    """Kendall tau-b between the orderings by trace, top-k, effective rank and theta (empty without metrics)."""
    if inputs.sensitivities is None:
        return []
    names = sorted(inputs.sensitivities)
    series = {
        "trace": [inputs.sensitivities[n].trace for n in names],
        "topk": [inputs.sensitivities[n].topk for n in names],
        "effective_rank": [float(inputs.sensitivities[n].effective_rank) for n in names],
        "theta": [inputs.allocation.theta[n] for n in names],
    }
    keys = list(series)
    return [
        (first, second, kendall_tau_b(series[first], series[second]))
        for index, first in enumerate(keys)
        for second in keys[index + 1 :]
    ]


def _metadata_items(metadata: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [
        (str(key), value if isinstance(value, str) else json.dumps(value, sort_keys=True))
        for key, value in metadata.items()
    ]


def _figure_captions(has_metrics: bool) -> list[tuple[str, str, str]]:
    figures = [(RANK_MAP_FILE, "Rank map", "Layers down, module types across; colour and number = LoRA rank.")]
    if has_metrics:
        figures.append(
            (
                METRICS_FILE,
                "Metrics by layer",
                "Per layer and module type: trace (global metric), top-k mean and effective rank (local "
                "metrics) and the fused score theta.",
            )
        )
    return figures


def _title(inputs: ReportInputs) -> str:
    source = inputs.source.resolve()
    return f"senslora report: {source.name if source.is_dir() else f'{source.parent.name}/{source.name}'}"


def render_html(inputs: ReportInputs, grid: ModuleGrid, images: Mapping[str, bytes]) -> str:
    """The self-contained HTML page (pictures as data: URIs, style inline)."""
    escape = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(_title(inputs))}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1400px}"
        "table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ccc;padding:2px 6px}"
        "td.number{text-align:right;font-variant-numeric:tabular-nums}th{background:#f2f2f2}"
        "img{max-width:100%}pre{background:#f6f6f6;padding:1em;overflow-x:auto}</style>",
        "</head><body>",
        f"<h1>{escape(_title(inputs))}</h1>",
        f"<p>Read: {escape(', '.join(inputs.files_read))}</p>",
    ]
    parts += [f"<p><strong>{escape(note)}</strong></p>" for note in source_notes(inputs)]
    parts.append('<h2>Budget</h2><table class="summary">')
    parts += [f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in summary_items(inputs)]
    parts.append('</table><h2>Fusion weights</h2><table class="weights"><tr><th>weight</th><th>value</th></tr>')
    parts += [
        f'<tr><td>{escape(k)}</td><td class="number">{format_number(v)}</td></tr>'
        for k, v in inputs.allocation.weights.items()
    ]
    parts.append("</table>")
    agreement = metric_agreement(inputs)
    if agreement:
        parts.append(
            "<h2>How the metrics agree</h2><p>Kendall tau-b between the module orderings by each metric "
            "(1: same order, 0: unrelated, -1: reversed).</p>"
            '<table class="agreement"><tr><th>metric</th><th>metric</th><th>Kendall tau</th></tr>'
        )
        parts += [
            f'<tr><td>{first}</td><td>{second}</td><td class="number">{tau_text(tau)}</td></tr>'
            for first, second, tau in agreement
        ]
        parts.append("</table>")
    for file_name, heading, caption in _figure_captions(inputs.sensitivities is not None):
        data = base64.b64encode(images[file_name]).decode("ascii")
        parts.append(
            f"<h2>{escape(heading)}</h2><p>{escape(caption)} "
            f'(<a href="{file_name}">{file_name}</a>)</p>'
            f'<img alt="{escape(heading)}" src="data:image/png;base64,{data}">'
        )
    parts.append('<h2>Modules</h2><table class="modules"><tr>')
    parts += [f"<th>{column}</th>" for column in TABLE_COLUMNS]
    parts.append("</tr>")
    for module in grid.modules:
        values = module.values()
        cells = [
            f"<td>{escape(format_number(values[c]))}</td>"
            if c in ("name", "type")
            else f'<td class="number">{format_number(values[c])}</td>'
            for c in TABLE_COLUMNS
        ]
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</table>")
    if inputs.sensitivity_metadata:
        parts.append('<h2>Sensitivity run</h2><table class="metadata">')
        parts += [
            f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>"
            for k, v in _metadata_items(inputs.sensitivity_metadata)
        ]
        parts.append("</table>")
    if inputs.config_text is not None:
        parts.append(f"<h2>Configuration ({escape(str(inputs.config_name))})</h2>")
        parts.append(f"<pre>{escape(inputs.config_text)}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(inputs: ReportInputs, grid: ModuleGrid) -> str:
    """The report as markdown, pictures referenced by relative file name."""
    lines = [f"# {_title(inputs)}", "", f"Read: {', '.join(inputs.files_read)}", ""]
    for note in source_notes(inputs):
        lines += [f"**{note}**", ""]
    lines += ["## Budget", "", "| item | value |", "|---|---|"]
    lines += [f"| {_markdown_cell(k)} | {_markdown_cell(v)} |" for k, v in summary_items(inputs)]
    lines += ["", "## Fusion weights", "", "| weight | value |", "|---|---:|"]
    lines += [f"| {k} | {format_number(v)} |" for k, v in inputs.allocation.weights.items()]
    agreement = metric_agreement(inputs)
    if agreement:
        lines += [
            "",
            "## How the metrics agree",
            "",
            "Kendall tau-b between the module orderings by each metric (1: same order, 0: unrelated, -1: reversed).",
            "",
        ]
        lines += ["| metric | metric | Kendall tau |", "|---|---|---:|"]
        lines += [f"| {first} | {second} | {tau_text(tau)} |" for first, second, tau in agreement]
    for file_name, heading, caption in _figure_captions(inputs.sensitivities is not None):
        lines += ["", f"## {heading}", "", caption, "", f"![{heading}]({file_name})"]
    lines += ["", "## Modules", "", "| " + " | ".join(TABLE_COLUMNS) + " |"]
    lines.append("|" + "|".join("---" if c in ("name", "type") else "---:" for c in TABLE_COLUMNS) + "|")
    for module in grid.modules:
        values = module.values()
        lines.append("| " + " | ".join(_markdown_cell(format_number(values[c])) for c in TABLE_COLUMNS) + " |")
    if inputs.sensitivity_metadata:
        lines += ["", "## Sensitivity run", "", "| item | value |", "|---|---|"]
        lines += [
            f"| {_markdown_cell(k)} | {_markdown_cell(v)} |" for k, v in _metadata_items(inputs.sensitivity_metadata)
        ]
    if inputs.config_text is not None:
        fence = "````" if "```" in inputs.config_text else "```"
        language = "json" if str(inputs.config_name).endswith(".json") else "yaml"
        lines += [
            "",
            f"## Configuration ({inputs.config_name})",
            "",
            f"{fence}{language}",
            inputs.config_text.rstrip("\n"),
            fence,
        ]
    return "\n".join(lines) + "\n"


def write_report(
    source: str | os.PathLike[str],
    output_dir: str | os.PathLike[str] | None = None,
    *,
    avg_rank: float = DEFAULT_AVG_RANK,
    overwrite: bool = False,
) -> list[Path]:
    """Write rank_map.png, metrics_by_layer.png (with metrics), report.html and report.md.

    Args:
        source: a run directory, a sensitivity.json or a ranks.json.
        output_dir: where to write; default the run directory or the file's directory.
        avg_rank: average rank when the ranks are computed here (only sensitivity.json known).
        overwrite: replace report files already there (otherwise their presence is an error).

    Returns:
        The paths written, in that order. Everything is rendered before the first file is written, and
        every file is written atomically.

    Raises:
        ValueError: as `load_report_inputs`, a bad `avg_rank`, or report files already there without
            `overwrite` (checked before any work).
    """
    inputs = load_report_inputs(source, avg_rank=avg_rank)
    grid = build_module_grid(inputs)
    allocation = inputs.allocation
    target = (
        Path(output_dir)
        if output_dir is not None
        else (inputs.source if inputs.source.is_dir() else inputs.source.parent)
    )
    unit = "ranks" if allocation.budget_unit == "rank" else "parameters"
    title = (
        f"LoRA ranks of {len(allocation.ranks)} modules: average {format_number(allocation.avg_rank)}, "
        f"{allocation.scheme}, budget {allocation.budget:,} {unit}"
    )
    if not overwrite:
        for name in (RANK_MAP_FILE, METRICS_FILE, HTML_FILE, MARKDOWN_FILE):
            if (target / name).exists():
                raise ValueError(f"{target / name} already exists; pass --overwrite to replace the report")
    images = {RANK_MAP_FILE: plot_rank_map(grid, title)}
    if inputs.sensitivities is not None:
        estimator = inputs.sensitivity_metadata.get("estimator")
        images[METRICS_FILE] = plot_metrics_by_layer(
            grid, "Sensitivity metrics by layer" + (f" ({estimator} estimator)" if estimator else "")
        )
    html_text = render_html(inputs, grid, images)
    markdown_text = render_markdown(inputs, grid)
    written = [atomic_write_bytes(target / name, data) for name, data in images.items()]
    written.append(atomic_write_text(target / HTML_FILE, html_text))
    written.append(atomic_write_text(target / MARKDOWN_FILE, markdown_text))
    return written
