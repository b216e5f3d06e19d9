"""`load_task_data`: a spec's source read, cleaned, labelled, split and capped; calibration samples of it."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from typing import Any

import datasets
import numpy as np
import pandas as pd

from senslora.finetune.data.columns import _apply_labels, _clean_rows, _resolve_columns
from senslora.finetune.data.presets import TASK_METRICS, _Preset
from senslora.finetune.data.sampling import (
    _CALIBRATION_BLOCK_STREAM,
    _CALIBRATION_STREAM,
    _TEST_CAP_STREAM,
    _TRAIN_CAP_STREAM,
    _VALIDATION_CAP_STREAM,
    TEST_SEED,
    _cap,
    _carve_test,
    _carve_validation,
    _permutation_prefix,
)
from senslora.finetune.data.sources import _load_source
from senslora.finetune.data.spec import DataSpec
from senslora.finetune.data.task_data import TaskData, _Columns
from senslora.finetune.evaluation.task_metrics import greater_is_better


def _to_dataset(frame: pd.DataFrame, task: str, label_names: list[str] | None) -> datasets.Dataset:
    features = {column: datasets.Value("string") for column in frame.columns if column != "label"}
    if task == "classification":
        features["label"] = datasets.ClassLabel(names=label_names)
    elif task == "regression":
        features["label"] = datasets.Value("float32")
    return datasets.Dataset.from_pandas(frame, features=datasets.Features(features), preserve_index=False)


def _label_summary(frame: pd.DataFrame, task: str, label_names: list[str] | None) -> dict[str, Any] | None:
    if task == "classification" and label_names is not None:
        counts = Counter(frame["label"].tolist())
        return {name: int(counts.get(i, 0)) for i, name in enumerate(label_names)}
    if task == "regression":
        values = frame["label"].to_numpy(dtype=np.float64)
        return {
            "mean": float(values.mean()),
            "std": float(values.std()),
            "min": float(values.min()),
            "max": float(values.max()),
        }
    return None


def _metrics_of(task: str, preset: _Preset | None) -> tuple[list[str], str]:
    if preset is not None and preset.task == task and preset.metric_names:
        return list(preset.metric_names), preset.main_metric or preset.metric_names[0]
    names, main = TASK_METRICS[task]
    return list(names), main


def _clean_split(frame: pd.DataFrame, columns: _Columns, split: str, where: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """`_clean_rows` of one split; refused when nothing, or not even half of the rows, is left."""
    kept, dropped = _clean_rows(frame, columns.texts(), columns.label)
    lost = sum(dropped.values())
    line = dropped_rows_line(split, lost, len(frame), dropped)
    if len(kept) == 0:
        name = "training" if split == "train" else split
        raise ValueError(
            f"no {name} examples left in {where!r} after dropping rows with a missing text or label ({line})"
        )
    if lost * 2 > len(frame):
        raise ValueError(f"{line} in {where!r}: more than half of the split would go (check the column options)")
    return kept, dropped


def _text_keys(frame: pd.DataFrame, columns: _Columns) -> list[str]:
    """One key per row: its text columns joined, so rows with equal texts have equal keys."""
    return frame[columns.texts()].astype(str).agg("\x1f".join, axis=1).tolist()


def held_out_overlap_lines(description: dict[str, Any]) -> list[str]:
    """One line per held-out split that shares texts with train (a run's `data` description), e.g.
    "test: 12 of 500 rows have a text that is also in train (its scores are optimistic)"."""
    return [
        f"{split}: {shared} of {description[f'{split}_examples']} rows have a text that is also in train "
        "(its scores are optimistic)"
        for split, shared in description["held_out_rows_in_train"].items()
        if shared
    ]


def dropped_rows_line(split: str, lost: int, total: int, by_column: dict[str, int]) -> str:
    """ "train: 9 of 60 rows dropped (empty 'label': 9)"."""
    reasons = ", ".join(f"empty {column!r}: {count}" for column, count in by_column.items())
    return f"{split}: {lost} of {total} rows dropped ({reasons})"


def load_task_data(spec: DataSpec) -> TaskData:
    """Load, clean, label and split the data a spec names.

    Returns:
        TaskData with train, validation (and test) datasets and everything evaluation needs.
    Raises:
        ValueError: a missing or unreadable file, unknown format or source, a missing column, labels that do
            not fit the task, an empty split, or a hub dataset that cannot be loaded.
    """
    # Read the source, settle the task and which columns hold text and label, and drop the rows that lack
    # one: an empty split is refused here, before labels are read.
    source = _load_source(spec)
    task, columns = _resolve_columns(spec, source)
    train, dropped_train = _clean_split(source.train, columns, "train", source.location)
    validation, dropped_validation = None, {}
    if source.validation is not None:
        validation, dropped_validation = _clean_split(
            source.validation, columns, "validation", str(source.validation_origin)
        )
    given_test, dropped_test = None, {}
    if source.test is not None and spec.test_examples:
        given_test, dropped_test = _clean_split(source.test, columns, "test", str(source.test_origin))

    # Class names: the preset's when it describes this task, else the source's own (e.g. a hub ClassLabel);
    # the label column becomes class ids (classification) or floats (regression).
    preset = source.preset
    names = preset.label_names if preset is not None and preset.task == task else None
    names = names or source.class_names.get(columns.label or "")
    splits = {"train": train, "validation": validation, "test": given_test}
    label_names, num_labels = _apply_labels(task, splits, columns.label or "", names)

    # The held-out test split first: the source's own (a fixed sample of it when larger than asked), else one
    # carved from train with its own fixed seed, whole groups of equal texts only.
    test, test_origin = None, None
    if given_test is not None:
        test = _cap(given_test, spec.test_examples, TEST_SEED, _TEST_CAP_STREAM)
        test_origin = str(source.test_origin)
        if len(test) < len(given_test):
            test_origin += f", a fixed sample of {len(test)} of its {len(given_test)} rows"
    elif spec.test_examples:
        train_index, test_index = _carve_test(_text_keys(train, columns), spec.test_examples)
        if len(test_index):
            test = train.iloc[test_index].reset_index(drop=True)
            train = train.iloc[train_index].reset_index(drop=True)
            test_origin = f"carved from train: at most {spec.test_examples} rows, fixed seed {TEST_SEED}"

    # Without a validation split one is carved from train (seeded); then each split is capped by a seeded
    # sample of its own random stream, so the two caps do not interact.
    origin = source.validation_origin or ""
    if validation is None:
        train_index, validation_index = _carve_validation(len(train), spec.validation_fraction, spec.seed)
        validation = train.iloc[validation_index].reset_index(drop=True)
        train = train.iloc[train_index].reset_index(drop=True)
        origin = f"carved from train: fraction {spec.validation_fraction}, seed {spec.seed}"
    train = _cap(train, spec.max_train_examples, spec.seed, _TRAIN_CAP_STREAM)
    validation = _cap(validation, spec.max_validation_examples, spec.seed, _VALIDATION_CAP_STREAM)
    seen = set(_text_keys(train, columns))
    held_out_in_train = {
        split: sum(key in seen for key in _text_keys(frame, columns))
        for split, frame in (("validation", validation), ("test", test))
        if frame is not None
    }

    # What the run records of its data (`data` in its metrics.json): its origin, how it was read and split.
    metric_names, main_metric = _metrics_of(task, preset)
    label_column = "label" if columns.label else None
    task_origin = "given" if spec.task else "preset" if preset is not None and preset.task else "columns"
    description: dict[str, Any] = {
        "source": spec.source,
        "kind": source.kind,
        "location": source.location,
        "task": task,
        "task_origin": task_origin,
        "available_columns": [str(c) for c in source.train.columns],
        "columns": {**asdict(columns), "label": label_column, "source_label": columns.label},
        "train_examples": len(train),
        "validation_examples": len(validation),
        "validation_origin": origin,
        "test_examples": 0 if test is None else len(test),
        "test_origin": test_origin,
        "rows_dropped": {
            "train": sum(dropped_train.values()),
            "validation": sum(dropped_validation.values()),
            "test": sum(dropped_test.values()),
        },
        "rows_dropped_by_column": {"train": dropped_train, "validation": dropped_validation, "test": dropped_test},
        "held_out_rows_in_train": held_out_in_train,
        "rows_read": {
            "train": len(source.train),
            "validation": 0 if source.validation is None else len(source.validation),
            "test": 0 if given_test is None else len(source.test),
        },
        "seed": spec.seed,
        "label_names": label_names,
        "labels": {
            "train": _label_summary(train, task, label_names),
            "validation": _label_summary(validation, task, label_names),
            "test": None if test is None else _label_summary(test, task, label_names),
        },
        "metric_names": metric_names,
        "main_metric": main_metric,
        **source.details,
        "spec": spec.to_dict(),
    }
    return TaskData(
        task=task,
        train=_to_dataset(train, task, label_names),
        validation=_to_dataset(validation, task, label_names),
        text_column=columns.text,
        text_pair_column=columns.text_pair,
        label_column=label_column,
        prompt_column=columns.prompt,
        response_column=columns.response,
        label_names=label_names,
        num_labels=num_labels,
        metric_names=metric_names,
        main_metric=main_metric,
        greater_is_better=greater_is_better(main_metric),
        description=description,
        test=None if test is None else _to_dataset(test, task, label_names),
    )


def calibration_subset(data: TaskData, num_examples: int, seed: int) -> datasets.Dataset:
    """A seeded random sample of `num_examples` training examples (all of train if it is smaller).

    With the same seed a smaller sample is contained in a larger one.
    """
    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 1:
        raise ValueError(f"num_examples must be a positive integer, got {num_examples!r}")
    return _seeded_sample(data.train, num_examples, seed, _CALIBRATION_STREAM)


def calibration_block_sample(blocks: datasets.Dataset, num_blocks: int, seed: int) -> datasets.Dataset:
    """A seeded random sample of `num_blocks` tokenized blocks, kept in their order (all if there are fewer).

    The calibration texts of causal_lm data are cut into blocks of max_length tokens; counting calibration
    in blocks keeps its cost independent of how long the texts are.
    """
    return _seeded_sample(blocks, num_blocks, seed, _CALIBRATION_BLOCK_STREAM)


def _seeded_sample(dataset: datasets.Dataset, count: int, seed: int, stream: int) -> datasets.Dataset:
    """`count` rows drawn by a seeded permutation of `stream`, kept in their order (all rows if fewer)."""
    if count >= len(dataset):
        return dataset
    return dataset.select(_permutation_prefix(len(dataset), count, seed, stream).tolist())


def load_calibration_source(spec: DataSpec, num_examples: int, seed: int) -> datasets.Dataset:
    """A calibration sample from a separate source (its train part); text-only sources give one column "text"."""
    data = load_task_data(spec)
    sample = calibration_subset(data, num_examples, seed)
    if data.task == "causal_lm" and data.text_column is not None:
        sample = sample.select_columns([data.text_column])
        if data.text_column != "text":
            sample = sample.rename_column(data.text_column, "text")
    return sample
