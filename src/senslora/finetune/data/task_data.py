"""`TaskData`, the loaded result, and the tables and columns it is built from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import datasets
import pandas as pd

from senslora.finetune.data.presets import _Preset


@dataclass
class TaskData:
    """Loaded train, validation and test data of one task.

    Attributes:
        task: one of TASKS.
        train, validation, test: datasets with the text columns named below and, for classification and
            regression, the labels in column "label" (int ids 0..K-1 / float32). `test` is a fixed held-out
            carve of the source's train rows (None when none was asked for or the data is too small).
        text_column, text_pair_column, label_column, prompt_column, response_column: the column names in
            train and validation (None where the task has no such column).
        label_names: classification class names in id order.
        num_labels: K for classification, 1 for regression.
        metric_names, main_metric, greater_is_better: what evaluation reports and what picks the best
            checkpoint.
        description: JSON-able record of source, sizes, columns, seed and label distribution; also
            `task_origin` ("given", "preset", or "columns" when inferred from them) and
            `available_columns` (every column of the train table).
    """

    task: str
    train: datasets.Dataset
    validation: datasets.Dataset
    text_column: str | None
    text_pair_column: str | None
    label_column: str | None
    prompt_column: str | None
    response_column: str | None
    label_names: list[str] | None
    num_labels: int | None
    metric_names: list[str]
    main_metric: str
    greater_is_better: bool
    description: dict[str, Any]
    test: datasets.Dataset | None = None


@dataclass
class _Source:
    """A source read into tables, before columns, labels and splits are resolved."""

    kind: str
    location: str
    train: pd.DataFrame
    validation: pd.DataFrame | None
    validation_origin: str | None
    preset: _Preset | None
    class_names: dict[str, list[str]]
    details: dict[str, Any]
    test: pd.DataFrame | None = None
    test_origin: str | None = None


@dataclass(frozen=True)
class _Columns:
    """The resolved column names of one task (None where the task has no such column)."""

    text: str | None = None
    text_pair: str | None = None
    label: str | None = None
    prompt: str | None = None
    response: str | None = None

    def texts(self) -> list[str]:
        return [c for c in (self.text, self.text_pair, self.prompt, self.response) if c is not None]
