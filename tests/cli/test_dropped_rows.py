"""Rows dropped for an empty label or text are announced per split, and a split losing most rows is refused."""

from __future__ import annotations

import pandas as pd


def _csv(path, empty_labels: int, rows: int = 60):
    texts = [f"{'good fun' if i % 2 else 'dull bad'} movie number {i}" for i in range(rows)]
    labels = ["positive" if i % 2 else "negative" for i in range(rows)]
    for i in range(empty_labels):
        labels[i] = None
    pd.DataFrame({"sentence": texts, "label": labels}).to_csv(path, index=False)
    return path


def test_finetune_names_the_count_and_the_column_of_dropped_rows(tiny_bert_dir, tmp_path, run_cli):
    data = _csv(tmp_path / "data.csv", empty_labels=9)
    code, out, err = run_cli(
        ["finetune", "--model", tiny_bert_dir, "--data", data, "--output-dir", tmp_path / "run"]
        + ["--no-progress", "--max-steps", "1", "--max-length", "16", "--calibration-examples", "8"]
    )
    assert code == 0, err
    assert "train: 9 of 60 rows dropped (empty 'label': 9)" in out.splitlines()


def test_a_validation_file_with_blank_texts_gets_its_own_line(tiny_bert_dir, tmp_path, run_cli):
    data = _csv(tmp_path / "train.csv", empty_labels=0)
    validation = tmp_path / "validation.csv"
    frame = pd.read_csv(_csv(tmp_path / "v.csv", empty_labels=0, rows=20))
    frame.loc[[0, 1, 2], "sentence"] = "   "
    frame.to_csv(validation, index=False)
    code, out, err = run_cli(
        ["finetune", "--model", tiny_bert_dir, "--data", data, "--validation-data", validation]
        + ["--output-dir", tmp_path / "run", "--no-progress", "--max-steps", "1", "--max-length", "16"]
        + ["--calibration-examples", "8"]
    )
    assert code == 0, err
    lines = out.splitlines()
    assert "validation: 3 of 20 rows dropped (empty 'sentence': 3)" in lines
    assert not any(line.startswith("train:") and "dropped" in line for line in lines)


def test_more_than_half_of_a_split_dropped_is_refused_before_anything_is_written(tiny_bert_dir, tmp_path, run_cli):
    data = _csv(tmp_path / "data.csv", empty_labels=31)
    run_dir = tmp_path / "run"
    code, out, err = run_cli(
        ["finetune", "--model", tiny_bert_dir, "--data", data, "--output-dir", run_dir, "--no-progress"]
    )
    assert code == 2
    (line,) = [line for line in err.splitlines() if line.strip()]
    assert "train: 31 of 60 rows dropped (empty 'label': 31)" in line and "more than half" in line
    assert not run_dir.exists()
