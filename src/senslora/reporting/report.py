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

The pieces: `report_inputs` reads the files, `module_grid` arranges the modules, `report_figures` draws the
two figures; this module writes the text (HTML, markdown) and the files, and re-exports the pieces' names.
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from senslora.core.allocation_result import Allocation
from senslora.reporting.kendall import kendall_tau_b, tau_text
from senslora.reporting.module_grid import NO_LAYER_LABEL, ModuleGrid, ModuleRow, build_module_grid
from senslora.reporting.report_figures import (
    metric_slots,
    metrics_figure_size,
    plot_metrics_by_layer,
    plot_rank_map,
    rank_map_size,
)
from senslora.reporting.report_inputs import CONFIG_FILES, DEFAULT_AVG_RANK, ReportInputs, load_report_inputs
from senslora.utils.io import atomic_write_bytes, atomic_write_text

RANK_MAP_FILE = "rank_map.png"
METRICS_FILE = "metrics_by_layer.png"
HTML_FILE = "report.html"
MARKDOWN_FILE = "report.md"

__all__ = [
    "CONFIG_FILES",
    "DEFAULT_AVG_RANK",
    "HTML_FILE",
    "MARKDOWN_FILE",
    "METRICS_FILE",
    "NO_LAYER_LABEL",
    "RANK_MAP_FILE",
    "TABLE_COLUMNS",
    "ModuleGrid",
    "ModuleRow",
    "ReportInputs",
    "build_module_grid",
    "format_number",
    "load_report_inputs",
    "metric_agreement",
    "metric_slots",
    "metrics_figure_size",
    "plot_metrics_by_layer",
    "plot_rank_map",
    "rank_map_size",
    "render_html",
    "render_markdown",
    "source_notes",
    "summary_items",
    "write_report",
]

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
