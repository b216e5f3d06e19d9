"""Tests of allocation comparison and the report (PNGs, HTML, markdown, CLI)."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

import senslora
from senslora.cli.report_commands import add_report_commands
from senslora.core.allocation_result import Allocation
from senslora.core.module_types import infer_module_type
from senslora.reporting.compare import compare_allocations, load_allocation_like, plot_comparison
from senslora.reporting.report import build_module_grid, load_report_inputs, write_report

BERT_TYPES = {
    "attention.self.query": (32, 32),
    "attention.self.key": (32, 32),
    "attention.self.value": (32, 32),
    "attention.output.dense": (32, 32),
    "intermediate.dense": (32, 128),
    "output.dense": (128, 32),
}
LLAMA_TYPES = {
    "self_attn.q_proj": (32, 32),
    "self_attn.k_proj": (32, 16),
    "self_attn.v_proj": (32, 16),
    "self_attn.o_proj": (32, 32),
    "mlp.gate_proj": (32, 64),
    "mlp.up_proj": (32, 64),
    "mlp.down_proj": (64, 32),
}
PIXELS_PER_INCH = 96


# ---------------------------------------------------------------------------------------------- compare


def test_compare_mappings_against_hand_computed_tau():
    a = {"a": 1, "b": 2, "c": 3, "d": 4, "e": 4, "g": 7}
    b = {"a": 2, "b": 1, "c": 3, "d": 5, "e": 1, "f": 9}
    # Common modules a..e. Pairs (sign of A difference, sign of B difference):
    # ab +,- D   ac +,+ C   ad +,+ C   ae +,- D   bc +,+ C
    # bd +,+ C   be +,0 tie in B   cd +,+ C   ce +,- D   de 0,+ tie in A
    concordant, discordant, pairs, tied_a, tied_b = 5, 3, 10, 1, 1
    expected = (concordant - discordant) / math.sqrt((pairs - tied_a) * (pairs - tied_b))
    assert expected == pytest.approx(2 / 9)
    result = compare_allocations(a, b, top=2)
    assert result.tau_basis == "rank"
    assert result.kendall_tau == pytest.approx(expected, abs=1e-12)
    assert result.kendall_tau_ranks == pytest.approx(expected, abs=1e-12)
    assert result.changed_share == pytest.approx(4 / 5)
    assert result.num_changed == 4
    assert (result.num_common, result.num_only_a, result.num_only_b) == (5, 1, 1)
    assert result.largest_changes == (("e", 4, 1), ("a", 1, 2))
    full = compare_allocations(a, b, top=10)
    assert full.largest_changes == (("e", 4, 1), ("a", 1, 2), ("b", 2, 1), ("d", 4, 5))
    document = full.to_dict()
    assert document["largest_changes"][0] == {"name": "e", "rank_a": 4, "rank_b": 1}
    assert json.loads(json.dumps(document)) == document


def _allocation(theta: dict[str, float], ranks: dict[str, int]) -> Allocation:
    return Allocation(
        ranks=ranks,
        theta=theta,
        weights={},
        budget=sum(ranks.values()),
        budget_unit="rank",
        budget_used=sum(ranks.values()),
        avg_rank=sum(ranks.values()) / len(ranks),
        scheme="sra",
        weighting="cv",
        metrics=("global", "local"),
        min_rank=1,
        max_rank=None,
        shapes=dict.fromkeys(ranks, (8, 8)),
    )


def test_compare_allocations_uses_theta():
    a = _allocation({"x": 0.1, "y": 0.2, "z": 0.3, "w": 0.4}, {"x": 1, "y": 1, "z": 2, "w": 2})
    b = _allocation({"x": 0.2, "y": 0.1, "z": 0.3, "w": 0.4}, {"x": 1, "y": 1, "z": 2, "w": 3})
    result = compare_allocations(a, b)
    assert result.tau_basis == "theta"
    # theta: only the pair (x, y) is discordant among 6, no ties: (5 - 1) / 6
    assert result.kendall_tau == pytest.approx(4 / 6)
    # ranks: concordant xz xw yz yw; xy tied in both, zw tied in A: 4 / sqrt((6 - 2) * (6 - 1))
    assert result.kendall_tau_ranks == pytest.approx(4 / math.sqrt(20))
    assert result.changed_share == pytest.approx(1 / 4)
    assert result.largest_changes == (("w", 2, 3),)


def test_compare_rejects_bad_input():
    with pytest.raises(ValueError, match="share no module"):
        compare_allocations({"a": 1}, {"b": 1})
    with pytest.raises(ValueError, match="non-negative integer"):
        compare_allocations({"a": -1}, {"a": 1})
    with pytest.raises(ValueError, match="non-negative integer"):
        compare_allocations({"a": 1.5}, {"a": 1})
    with pytest.raises(ValueError, match="top"):
        compare_allocations({"a": 1}, {"a": 1}, top=-1)
    assert math.isnan(compare_allocations({"a": 1, "b": 1}, {"a": 2, "b": 3}).kendall_tau)


# ---------------------------------------------------------------------------------------------- runs


def _sensitivities(names_and_shapes: dict[str, tuple[int, int]], seed: int) -> dict[str, senslora.ModuleSensitivity]:
    generator = np.random.default_rng(seed)
    return {
        name: senslora.ModuleSensitivity.from_diagonal(
            name, generator.gamma(1.0 + index % 3, size=d_in) * (1 + index % 4), d_in=d_in, d_out=d_out
        )
        for index, (name, (d_in, d_out)) in enumerate(names_and_shapes.items())
    }


def bert_modules(num_layers: int = 2) -> dict[str, tuple[int, int]]:
    modules = {f"bert.encoder.layer.{i}.{s}": shape for i in range(num_layers) for s, shape in BERT_TYPES.items()}
    modules["bert.pooler.dense"] = (32, 32)
    return modules


def llama_modules(num_layers: int = 3) -> dict[str, tuple[int, int]]:
    return {f"model.layers.{i}.{s}": shape for i in range(num_layers) for s, shape in LLAMA_TYPES.items()}


def make_run(directory: Path, modules: dict[str, tuple[int, int]], *, with_ranks: bool = True) -> Path:
    directory.mkdir(parents=True)
    sensitivities = _sensitivities(modules, seed=len(modules))
    (directory / "sensitivity.json").write_text(
        senslora.sensitivities_to_json(sensitivities, {"estimator": "activation", "num_tokens": 1234})
    )
    if with_ranks:
        allocation = senslora.allocate_ranks(sensitivities, avg_rank=4, dominance_share=None)
        (directory / "ranks.json").write_text(allocation.to_json())
    return directory


@pytest.fixture
def bert_run(tmp_path: Path) -> Path:
    run = make_run(tmp_path / "bert_run", bert_modules(2))
    (run / "config.yaml").write_text("model: tiny-bert\navg_rank: 4\nnote: a < b & c\n")
    return run


@pytest.fixture
def llama_run(tmp_path: Path) -> Path:
    return make_run(tmp_path / "llama_run", llama_modules(3))


def png_size(path: Path) -> tuple[int, int]:
    image = imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    return image.shape[1], image.shape[0]  # (width, height)


def expected_rank_map(rows: int, types: int) -> tuple[int, int]:
    # documented: (2.5 + 1.0 * types) x (1.5 + 0.375 * rows) inches at 96 dpi
    return round((2.5 + types) * PIXELS_PER_INCH), round((1.5 + 0.375 * rows) * PIXELS_PER_INCH)


def expected_metrics(slots: int) -> tuple[int, int]:
    # documented: min(30, max(8, 2 + 0.125 * slots)) x 11 inches at 96 dpi
    return round(min(30, max(8, 2 + 0.125 * slots)) * PIXELS_PER_INCH), 11 * PIXELS_PER_INCH


class _Collector(HTMLParser):
    """Every src/href value, and the cell texts of the table with class "modules"."""

    def __init__(self) -> None:
        super().__init__()
        self.references: list[str] = []
        self.tags: set[str] = set()
        self.rows: list[list[str]] = []
        self._in_modules = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        attributes = dict(attrs)
        self.references += [value for key, value in attrs if key in ("src", "href") and value is not None]
        if tag == "table" and attributes.get("class") == "modules":
            self._in_modules = True
        elif self._in_modules and tag == "tr":
            self.rows.append([])
        elif self._in_modules and tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_modules = False
        elif self._cell is not None and tag in ("td", "th"):
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse_html(path: Path) -> _Collector:
    collector = _Collector()
    collector.feed(path.read_text(encoding="utf-8"))
    return collector


def markdown_table(path: Path, heading: str) -> list[list[str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    start = lines.index(heading) + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return [rows[0], *rows[2:]]  # drop the alignment line


def check_table_matches_json(rows: list[list[str]], run: Path, *, with_metrics: bool) -> None:
    header, body = rows[0], rows[1:]
    assert header == [
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
    ]
    ranks = {m["name"]: m for m in json.loads((run / "ranks.json").read_text())["modules"]}
    metrics = (
        {m["name"]: m for m in json.loads((run / "sensitivity.json").read_text())["modules"]} if with_metrics else {}
    )
    assert sorted(row[0] for row in body) == sorted(ranks)
    for row in body:
        cell = dict(zip(header, row, strict=True))
        entry = ranks[cell["name"]]
        assert int(cell["d_in"]) == entry["d_in"] and int(cell["d_out"]) == entry["d_out"]
        assert int(cell["rank"]) == entry["rank"]
        assert int(cell["lora_params"]) == entry["rank"] * (entry["d_in"] + entry["d_out"])
        assert float(cell["theta"]) == float(f"{entry['theta']:.6g}")
        assert float(cell["theta"]) == pytest.approx(entry["theta"], rel=1e-5)
        if with_metrics:
            source = metrics[cell["name"]]
            for key in ("trace", "topk"):
                assert float(cell[key]) == float(f"{source[key]:.6g}")
                assert float(cell[key]) == pytest.approx(source[key], rel=1e-5)
            assert int(cell["effective_rank"]) == source["effective_rank"]
        else:
            assert cell["trace"] == cell["topk"] == cell["effective_rank"] == ""
        layer, module_type = infer_module_type(cell["name"])
        assert cell["layer"] == ("" if layer is None else str(layer))
        assert cell["type"] == module_type


def check_html_is_self_contained(html_path: Path, written: list[Path]) -> None:
    text = html_path.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text
    collector = parse_html(html_path)
    assert not ({"script", "link", "iframe", "object"} & collector.tags)
    names = {path.name for path in written}
    assert collector.references
    for reference in collector.references:
        assert reference.startswith("data:image/png;base64,") or reference in names, reference


# ---------------------------------------------------------------------------------------------- report


def test_report_on_bert_run_directory(bert_run: Path):
    written = write_report(bert_run)
    assert [p.name for p in written] == ["rank_map.png", "metrics_by_layer.png", "report.html", "report.md"]
    assert all(p.parent == bert_run for p in written)
    # 2 layer rows + "no layer" row; 6 BERT types + pooler.dense
    assert png_size(bert_run / "rank_map.png") == expected_rank_map(rows=3, types=7) == (912, 252)
    # slots: 2 layers * 6 types + 1 unindexed type + 3 groups = 16
    assert png_size(bert_run / "metrics_by_layer.png") == expected_metrics(16) == (768, 1056)
    html_path = bert_run / "report.html"
    check_html_is_self_contained(html_path, written)
    check_table_matches_json(parse_html(html_path).rows, bert_run, with_metrics=True)
    check_table_matches_json(markdown_table(bert_run / "report.md", "## Modules"), bert_run, with_metrics=True)
    text = html_path.read_text(encoding="utf-8")
    assert "model: tiny-bert" in text and "a &lt; b &amp; c" in text  # the config, escaped
    assert "Read: sensitivity.json, ranks.json, config.yaml" in text
    assert str(bert_run.parent) not in text  # no absolute paths: the report can move with its run
    markdown = (bert_run / "report.md").read_text(encoding="utf-8")
    assert "![Rank map](rank_map.png)" in markdown and "![Metrics by layer](metrics_by_layer.png)" in markdown
    ranks_document = json.loads((bert_run / "ranks.json").read_text())
    summary = dict(markdown_table(bert_run / "report.md", "## Budget")[1:])
    assert summary["budget"] == f"{ranks_document['budget']} ({ranks_document['budget_unit']})"
    assert int(summary["budget_used"]) == ranks_document["budget_used"]
    assert int(summary["LoRA parameters"]) == ranks_document["param_count"]
    uniform = 4 * sum(m["d_in"] + m["d_out"] for m in ranks_document["modules"])
    assert int(summary["uniform LoRA parameters at rank 4"]) == uniform
    weights = dict(markdown_table(bert_run / "report.md", "## Fusion weights")[1:])
    for key, value in ranks_document["weights"].items():
        assert float(weights[key]) == pytest.approx(value, rel=1e-5)
    # deterministic: the same bytes again
    before = {p.name: p.read_bytes() for p in written}
    write_report(bert_run, overwrite=True)
    assert {p.name: p.read_bytes() for p in written} == before


def test_report_on_llama_run_into_output_dir(llama_run: Path, tmp_path: Path):
    output = tmp_path / "out"
    written = write_report(llama_run, output)
    assert all(p.parent == output for p in written)
    assert png_size(output / "rank_map.png") == expected_rank_map(rows=3, types=7) == (912, 252)
    assert png_size(output / "metrics_by_layer.png") == expected_metrics(3 * 7 + 3) == (768, 1056)
    check_html_is_self_contained(output / "report.html", written)
    rows = parse_html(output / "report.html").rows
    check_table_matches_json(rows, llama_run, with_metrics=True)
    assert [row[2] for row in rows[1:8]] == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    assert not (llama_run / "report.html").exists()


def test_metrics_figure_grows_with_layers(tmp_path: Path):
    run = make_run(tmp_path / "deep", llama_modules(12))
    write_report(run)
    assert png_size(run / "metrics_by_layer.png") == expected_metrics(12 * 7 + 12) == (1344, 1056)
    assert png_size(run / "rank_map.png") == expected_rank_map(rows=12, types=7) == (912, 576)


@pytest.mark.filterwarnings("ignore::senslora.DominanceWarning")
def test_report_from_sensitivity_file_only(tmp_path: Path):
    run = make_run(tmp_path / "only_metrics", bert_modules(2), with_ranks=False)
    written = write_report(run / "sensitivity.json", avg_rank=2)
    assert [p.name for p in written] == ["rank_map.png", "metrics_by_layer.png", "report.html", "report.md"]
    assert not (run / "ranks.json").exists()
    markdown = (run / "report.md").read_text(encoding="utf-8")
    assert "allocation was computed for this report" in markdown
    summary = dict(markdown_table(run / "report.md", "## Budget")[1:])
    # the default budget: uniform LoRA's parameters at rank 2, 2 * (2 * (4 * 64 + 160 + 160) + 64) = 2,432
    assert summary["budget"] == "2432 (params)"
    rows = markdown_table(run / "report.md", "## Modules")
    shapes = bert_modules(2)
    assert sum(int(row[9]) * sum(shapes[row[0]]) for row in rows[1:]) <= 2432
    sensitivities, _ = senslora.sensitivities_from_json((run / "sensitivity.json").read_text())
    expected = senslora.allocate_ranks(sensitivities, avg_rank=2)
    assert {row[0]: int(row[9]) for row in rows[1:]} == expected.ranks


def test_report_from_ranks_file_only(bert_run: Path, tmp_path: Path):
    run = tmp_path / "only_ranks"
    run.mkdir()
    (run / "ranks.json").write_text((bert_run / "ranks.json").read_text())
    written = write_report(run / "ranks.json")
    assert [p.name for p in written] == ["rank_map.png", "report.html", "report.md"]
    assert not (run / "metrics_by_layer.png").exists()
    assert png_size(run / "rank_map.png") == expected_rank_map(rows=3, types=7)
    check_html_is_self_contained(run / "report.html", written)
    check_table_matches_json(parse_html(run / "report.html").rows, run, with_metrics=False)
    assert "per-layer metric figure is skipped" in (run / "report.md").read_text(encoding="utf-8")
    assert "metrics_by_layer" not in (run / "report.html").read_text(encoding="utf-8")


def test_report_rejects_bad_input(tmp_path: Path, bert_run: Path):
    with pytest.raises(ValueError, match="does not exist"):
        write_report(tmp_path / "missing")
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"format": "something.else/1", "modules": []}))
    with pytest.raises(ValueError, match="not a senslora sensitivity file"):
        write_report(wrong)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        write_report(broken)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="neither"):
        write_report(empty)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "sensitivity.json").write_text((bert_run / "sensitivity.json").read_text())
    other = senslora.allocate_ranks(_sensitivities(llama_modules(1), seed=1), avg_rank=4)
    (mixed / "ranks.json").write_text(other.to_json())
    with pytest.raises(ValueError, match="different modules"):
        write_report(mixed)
    assert not (mixed / "report.html").exists()


def test_encoder_decoder_rows_are_labelled_by_stack(tmp_path: Path):
    modules = {
        f"{stack}.block.{i}.layer.{j}.{part}": (16, 16)
        for stack in ("encoder", "decoder")
        for i in range(2)
        for j, part in enumerate(("SelfAttention.q", "SelfAttention.v"))
    }
    run = make_run(tmp_path / "t5", modules, with_ranks=False)
    grid = build_module_grid(load_report_inputs(run))
    assert grid.row_labels == ("encoder 0", "encoder 1", "decoder 0", "decoder 1")
    assert grid.types == ("SelfAttention.q", "SelfAttention.v")
    assert len(grid.modules) == 8


# ----------------------------------------------------------------------------------------- compare I/O


def test_load_allocation_like_and_plot(bert_run: Path, tmp_path: Path):
    from_dir = load_allocation_like(bert_run)
    from_file = load_allocation_like(bert_run / "ranks.json")
    assert isinstance(from_dir, Allocation) and from_dir.ranks == from_file.ranks
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"bert.pooler.dense": 3, "bert.encoder.layer.0.output.dense": 1}))
    assert load_allocation_like(plain) == {"bert.pooler.dense": 3, "bert.encoder.layer.0.output.dense": 1}
    with pytest.raises(ValueError, match="sensitivity file"):
        load_allocation_like(bert_run / "sensitivity.json")
    with pytest.raises(ValueError, match="does not exist"):
        load_allocation_like(tmp_path / "nope.json")
    with pytest.raises(ValueError, match=r"no ranks\.json"):
        load_allocation_like(tmp_path)
    path = plot_comparison(from_dir, load_allocation_like(plain), tmp_path / "plots" / "cmp.png")
    assert png_size(path) == (6 * PIXELS_PER_INCH, 6 * PIXELS_PER_INCH)


# ----------------------------------------------------------------------------------------------- CLI


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="senslora")
    add_report_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


def test_cli_report_and_compare(bert_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert _main(["report", str(bert_run), "--output-dir", str(tmp_path / "cli")]) == 0
    assert "report.html" in capsys.readouterr().out
    other = make_run(tmp_path / "other", bert_modules(2) | {"bert.encoder.layer.2.output.dense": (128, 32)})
    plot = tmp_path / "cmp.png"
    assert _main(["compare", str(bert_run), str(other), "--plot", str(plot), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "Kendall tau (theta)" in out and "rank changed" in out and "largest changes" in out
    assert "13 common, 0 only in A, 1 only in B" in out
    assert png_size(plot) == (576, 576)
    assert _main(["compare", str(bert_run / "ranks.json"), str(other), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    expected = compare_allocations(load_allocation_like(bert_run), load_allocation_like(other), top=10)
    assert document == expected.to_dict()
    with pytest.raises(ValueError):
        _main(["report", str(tmp_path / "missing")])


def test_import_does_not_load_matplotlib():
    code = (
        "import sys, senslora, senslora.reporting.report, senslora.reporting.compare, "
        "senslora.cli.report_commands, senslora.core.module_types; "
        "print('matplotlib' in sys.modules, 'scipy.stats' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


def test_report_and_plot_are_not_replaced_without_overwrite(bert_run: Path, tmp_path: Path, capsys):
    from senslora.cli import main

    out = tmp_path / "report"
    assert _main(["report", str(bert_run), "--output-dir", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "report.md").write_text("my notes")
    capsys.readouterr()
    assert main(["report", str(bert_run), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already exists; pass --overwrite" in err and len(err.strip().splitlines()) == 1
    assert (out / "report.md").read_text() == "my notes"  # nothing replaced
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != "report.md"} == {
        k: v for k, v in before.items() if k != "report.md"
    }
    assert main(["report", str(bert_run), "--output-dir", str(out), "--overwrite"]) == 0
    assert (out / "report.md").read_bytes() == before["report.md"]

    plot = tmp_path / "cmp.png"
    plot.write_bytes(b"keep me")
    assert main(["compare", str(bert_run), str(bert_run), "--plot", str(plot)]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err and plot.read_bytes() == b"keep me"
    assert main(["compare", str(bert_run), str(bert_run), "--plot", str(plot), "--overwrite"]) == 0
    assert png_size(plot) == (576, 576)
