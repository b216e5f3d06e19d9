"""The held-out test split: its size, its fixed seed, equal texts kept on one side, and what scores it."""

from __future__ import annotations

import json

import datasets
import pandas as pd
import pytest
import torch

from senslora.finetune.data import held_out_overlap_lines, load_task_data
from senslora.finetune.data.spec import DataSpec


def _csv(tmp_path, texts, labels):
    path = tmp_path / "data.csv"
    pd.DataFrame({"text": texts, "label": labels}).to_csv(path, index=False)
    return str(path)


def test_test_split_is_a_fifth_at_most_and_disjoint_from_train_and_validation(tmp_path):
    texts = [f"review number {i}" for i in range(200)]
    source = _csv(tmp_path, texts, [i % 2 for i in range(200)])
    data = load_task_data(DataSpec(source, test_examples=1000))
    assert len(data.test) == 40  # a fifth of 200, below the 1000 asked for
    assert len(data.train) + len(data.validation) + len(data.test) == 200
    test = set(data.test["text"])
    assert not test & set(data.train["text"]) and not test & set(data.validation["text"])
    small = load_task_data(DataSpec(source, test_examples=25))
    assert len(small.test) == 25 and set(small.test["text"]) <= test | set(small.test["text"])
    assert data.description["test_examples"] == 40 and data.description["labels"]["test"] is not None


def test_test_split_is_the_same_for_every_run_seed_while_validation_moves(tmp_path):
    source = _csv(tmp_path, [f"text {i}" for i in range(300)], [i % 3 for i in range(300)])
    first = load_task_data(DataSpec(source, test_examples=50, seed=0))
    other = load_task_data(DataSpec(source, test_examples=50, seed=7))
    assert first.test["text"] == other.test["text"]
    assert set(first.validation["text"]) != set(other.validation["text"])


def test_equal_texts_stay_together_and_a_text_too_common_to_fit_stays_out_of_test(tmp_path):
    # "common" fills 30 rows, more than the 20 the test split may take; every other text appears twice.
    texts = ["common"] * 30 + [f"pair {i}" for i in range(35) for _ in range(2)]
    source = _csv(tmp_path, texts, [0] * 30 + [i % 2 for i in range(70)])
    data = load_task_data(DataSpec(source, test_examples=1000))
    counts = pd.Series(data.test["text"]).value_counts()
    assert "common" not in counts and (counts == 2).all() and len(data.test) == 20
    assert not set(data.test["text"]) & (set(data.train["text"]) | set(data.validation["text"]))


def test_no_test_split_when_asked_for_none_or_too_few_rows(tmp_path):
    source = _csv(tmp_path, ["a b", "c d", "e f", "g h"], [0, 1, 0, 1])
    assert load_task_data(DataSpec(source, test_examples=0)).test is None
    assert load_task_data(DataSpec(source, test_examples=10)).test is None  # a fifth of 4 rows is 0


def test_metrics_json_reports_the_kept_adapter_on_test_as_stock_peft_scores_it(
    tiny_bert_dir, sentiment_csv, tmp_path, run_cli
):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run_dir = tmp_path / "run"
    options = ["--model", tiny_bert_dir, "--data", sentiment_csv, "--no-progress", "--max-length", "32"]
    code, out, err = run_cli(
        ["finetune", *options, "--output-dir", run_dir, "--epochs", "2", "--batch-size", "16"]
        + ["--calibration-examples", "32"]
    )
    assert code == 0, err
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "test (32 held-out examples)" in out and metrics["data"]["test_examples"] == 32

    # Independent reference: the test rows as the data module carves them, scored by hand with stock PEFT.
    data = load_task_data(DataSpec(str(sentiment_csv), test_examples=1000, max_validation_examples=1000))
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2)
    model = PeftModel.from_pretrained(base, run_dir / "adapter").eval()
    with torch.no_grad():
        texts = list(data.test["sentence"])
        encoded = tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
        predictions = model(**encoded).logits.argmax(-1)
    accuracy = (predictions == torch.tensor(list(data.test["label"]))).float().mean().item()
    assert abs(metrics["test"]["accuracy"] - accuracy) < 1e-6

    code, out, err = run_cli(["evaluate", *options, "--adapter", run_dir / "adapter", "--split", "test"])
    assert code == 0, err
    assert abs(json.loads(out)["accuracy"] - accuracy) < 1e-6


def test_evaluating_a_test_split_the_data_does_not_have_is_one_line_exit_2(
    tiny_bert_dir, sentiment_csv, tmp_path, run_cli
):
    run_dir = tmp_path / "run"
    options = ["--model", tiny_bert_dir, "--data", sentiment_csv, "--no-progress", "--max-length", "32"]
    code, _, err = run_cli(["finetune", *options, "--output-dir", run_dir, "--max-steps", "2", "--test-examples", "0"])
    assert code == 0, err
    assert json.loads((run_dir / "metrics.json").read_text())["test"] is None
    code, _, err = run_cli(
        ["evaluate", *options, "--adapter", run_dir / "adapter", "--split", "test", "--test-examples", "0"]
    )
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no test split" in err


# ------------------------------------------------------------------------------------ a given test split


def test_a_given_test_file_is_the_test_split_and_nothing_is_carved(tmp_path):
    source = _csv(tmp_path, [f"train text {i}" for i in range(200)], [i % 2 for i in range(200)])
    test_file = tmp_path / "test.csv"
    pd.DataFrame({"text": [f"test text {i}" for i in range(30)], "label": [1, 0] * 15}).to_csv(test_file, index=False)
    data = load_task_data(DataSpec(source, test_split=str(test_file), test_examples=1000))
    assert sorted(data.test["text"]) == sorted(f"test text {i}" for i in range(30))
    assert data.test["label"] == [1, 0] * 15
    assert len(data.train) + len(data.validation) == 200  # no row of train went to test
    assert data.description["test_origin"] == f"file {str(test_file)!r}"

    # Larger than asked: a sample of the file, the same one for every run seed.
    small = [load_task_data(DataSpec(source, test_split=str(test_file), test_examples=10, seed=s)) for s in (0, 5)]
    assert len(small[0].test) == 10 and small[0].test["text"] == small[1].test["text"]
    assert set(small[0].test["text"]) < set(data.test["text"])
    assert "a fixed sample of 10 of its 30 rows" in small[0].description["test_origin"]


def test_held_out_rows_whose_text_is_also_in_train_are_counted_and_reported(tmp_path):
    # Train has 100 distinct texts and no carve for validation (a file of its own); the test file repeats 3
    # training texts (one of them twice) beside 7 new ones, the validation file repeats 1.
    source = _csv(tmp_path, [f"train text {i}" for i in range(100)], [i % 2 for i in range(100)])
    test_texts = ["train text 4", "train text 4", "train text 50", "train text 99"] + [f"new {i}" for i in range(7)]
    test_file, validation_file = tmp_path / "test.csv", tmp_path / "validation.csv"
    pd.DataFrame({"text": test_texts, "label": [0, 1] * 5 + [0]}).to_csv(test_file, index=False)
    pd.DataFrame({"text": ["train text 7", "other"], "label": [0, 1]}).to_csv(validation_file, index=False)
    spec = DataSpec(source, validation_split=str(validation_file), test_split=str(test_file), test_examples=100)
    data = load_task_data(spec)
    assert data.description["held_out_rows_in_train"] == {"validation": 1, "test": 4}
    assert held_out_overlap_lines(data.description) == [
        "validation: 1 of 2 rows have a text that is also in train (its scores are optimistic)",
        "test: 4 of 11 rows have a text that is also in train (its scores are optimistic)",
    ]

    # A carved test split never shares a text with train, so nothing is said of it.
    carved = load_task_data(DataSpec(source, test_examples=20))
    assert carved.description["held_out_rows_in_train"]["test"] == 0
    assert not any(line.startswith("test:") for line in held_out_overlap_lines(carved.description))


def test_string_labels_of_a_test_file_share_the_training_mapping(tmp_path):
    train = tmp_path / "train.csv"
    pd.DataFrame({"text": [f"t{i}" for i in range(40)], "label": ["neg", "pos"] * 20}).to_csv(train, index=False)
    test_file = tmp_path / "test.csv"
    pd.DataFrame({"text": ["a", "b", "c"], "label": ["pos", "pos", "neg"]}).to_csv(test_file, index=False)
    data = load_task_data(DataSpec(str(train), test_split=str(test_file), test_examples=100))
    assert data.label_names == ["neg", "pos"] and data.test["label"] == [1, 1, 0]


def _hub_splits(test_labels):
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["negative", "positive"])}
    )

    def split(prefix, labels):
        texts = [f"{prefix} {i}" for i in range(len(labels))]
        return datasets.Dataset.from_dict({"text": texts, "label": labels}, features=features)

    splits = {"train": split("train", [0, 1] * 50), "validation": split("dev", [0, 1] * 5)}
    return datasets.DatasetDict(splits | {"test": split("test", test_labels)})


def test_a_hub_datasets_labelled_test_split_is_used_and_a_hidden_one_is_carved(monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset", lambda *args: _hub_splits([1, 0, 1, 1]))
    data = load_task_data(DataSpec("someone/reviews", validation_split="validation", test_examples=1000))
    assert data.test["text"] == ["test 0", "test 1", "test 2", "test 3"] and data.test["label"] == [1, 0, 1, 1]
    assert len(data.train) == 100 and data.description["test_origin"] == "split 'test'"
    assert load_task_data(DataSpec("someone/reviews", test_examples=0)).test is None

    # GLUE-style: the test labels are hidden (-1), so the test split is carved from train instead.
    monkeypatch.setattr(datasets, "load_dataset", lambda *args: _hub_splits([-1, -1, -1]))
    hidden = load_task_data(DataSpec("someone/reviews", validation_split="validation", test_examples=1000))
    assert len(hidden.test) == 20 and all(text.startswith("train ") for text in hidden.test["text"])
    assert hidden.description["test_origin"].startswith("carved from train")
    with pytest.raises(ValueError, match="split 'test' has no labelled rows"):
        load_task_data(DataSpec("someone/reviews", test_split="test", test_examples=1000))
    with pytest.raises(ValueError, match="has no split 'heldout'"):
        load_task_data(DataSpec("someone/reviews", test_split="heldout", test_examples=1000))


def test_bad_test_data_is_one_clear_error(tmp_path):
    source = _csv(tmp_path, [f"text {i}" for i in range(50)], [i % 2 for i in range(50)])
    with pytest.raises(ValueError, match="is not an existing file"):
        load_task_data(DataSpec(source, test_split=str(tmp_path / "missing.csv"), test_examples=10))
    with pytest.raises(ValueError, match="ships a single table"):
        load_task_data(DataSpec("rotten_tomatoes", test_split=source, test_examples=10))
    with pytest.raises(ValueError, match="test_examples is 0"):
        DataSpec(source, test_split=source, test_examples=0)
    unlabelled = tmp_path / "unlabelled.csv"
    pd.DataFrame({"text": ["a", "b"]}).to_csv(unlabelled, index=False)
    with pytest.raises(ValueError, match="the test data .* lacks column 'label'"):
        load_task_data(DataSpec(source, test_split=str(unlabelled), test_examples=10))


def test_finetune_and_evaluate_score_a_given_test_file(tiny_bert_dir, sentiment_csv, tmp_path, run_cli):
    rows = pd.read_csv(sentiment_csv)
    test_file = tmp_path / "heldout.csv"
    rows.iloc[:24].to_csv(test_file, index=False)
    run_dir = tmp_path / "run"
    options = ["--model", tiny_bert_dir, "--data", sentiment_csv, "--no-progress", "--max-length", "32"]
    options += ["--test-data", test_file]
    code, out, err = run_cli(["finetune", *options, "--output-dir", run_dir, "--max-steps", "2"])
    assert code == 0, err
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["data"]["test_examples"] == 24 and "test (24 held-out examples)" in out
    assert metrics["data"]["train_examples"] + metrics["data"]["validation_examples"] == len(rows)
    # The file repeats rows of the data: those the run trained on are counted, by hand here, and said.
    spec = DataSpec(str(sentiment_csv), test_split=str(test_file), test_examples=1000, max_validation_examples=1000)
    trained_on = set(load_task_data(spec).train["sentence"])
    shared = sum(text in trained_on for text in rows.iloc[:24]["sentence"])
    assert shared > 12 and metrics["data"]["held_out_rows_in_train"]["test"] == shared
    assert f"test: {shared} of 24 rows have a text that is also in train" in out
    code, out, err = run_cli(["evaluate", *options, "--adapter", run_dir / "adapter", "--split", "test"])
    assert code == 0, err
    assert abs(json.loads(out)["accuracy"] - metrics["test"]["accuracy"]) < 1e-6
