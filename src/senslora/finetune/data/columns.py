"""Columns and labels: which columns hold the text and the label, the task they imply, and label ids."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from senslora.finetune.data.presets import TASKS, _Preset
from senslora.finetune.data.spec import DataSpec
from senslora.finetune.data.task_data import _Columns, _Source

_TEXT_CANDIDATES = ("text", "sentence", "content", "document")
_PAIR_CANDIDATES = (("sentence1", "sentence2"), ("question1", "question2"), ("premise", "hypothesis"))
_LABEL_CANDIDATES = ("label", "labels")
_PROMPT_CANDIDATES = ("prompt", "instruction", "query")
_RESPONSE_CANDIDATES = ("response", "output", "completion", "answer")


def _pick(
    given: str | None, default: str | None, candidates: Sequence[str], columns: Sequence[str], role: str
) -> str | None:
    if given is not None:
        if given not in columns:
            raise ValueError(f"{role} column {given!r} not found; available columns: {', '.join(columns)}")
        return given
    if default is not None:
        return default if default in columns else None
    return next((c for c in candidates if c in columns), None)


def _require(name: str | None, role: str, task: str, hint: str | None, columns: Sequence[str]) -> str:
    if name is None:
        wanted = f"column {hint!r}" if hint else f"{role} column"
        raise ValueError(
            f"task {task!r} needs a {role} column: {wanted} not found (set {role}_column); "
            f"available columns: {', '.join(columns)}"
        )
    return name


def _label_kind(values: pd.Series) -> str:
    """ "int", "float" or "str": how the labels of a column are written."""
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_integer_dtype(values):
        return "int"
    if pd.api.types.is_float_dtype(values):
        return "float"
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return "int"
    if all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in values):
        return "float"
    return "str"


def _infer_task(columns: _Columns, train: pd.DataFrame, class_names: dict[str, list[str]]) -> str:
    if columns.prompt is not None and columns.response is not None:
        return "instruction"
    label = columns.label
    if label is not None:
        if label in class_names:
            return "classification"
        values = train[label].dropna()
        if _label_kind(values) != "float":
            return "classification"
        numbers = values.to_numpy(dtype=np.float64)
        return "classification" if np.all(numbers == np.round(numbers)) else "regression"
    if columns.text is not None:
        return "causal_lm"
    raise ValueError(
        f"cannot infer the task from the columns {', '.join(train.columns)}: give task= "
        f"({', '.join(TASKS)}) and the column names"
    )


def _clean_rows(
    frame: pd.DataFrame, text_columns: Sequence[str], label: str | None
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Keep the used columns; drop rows with a missing or blank text or a missing label.

    Returns the kept table and, per column, how many rows were dropped for it (a row lacking several
    values counts once, under the first of them in text, ..., label order).
    """
    keep = np.ones(len(frame), dtype=bool)
    cleaned: dict[str, Any] = {}
    dropped: dict[str, int] = {}
    for column in text_columns:
        values = frame[column]
        missing = values.isna().to_numpy()
        texts = values.where(~missing, "").astype(str).str.strip()
        present = ~missing & (texts != "").to_numpy()
        dropped[column] = int((keep & ~present).sum())
        keep &= present
        cleaned[column] = texts.to_numpy(dtype=object)
    if label is not None:
        present = ~frame[label].isna().to_numpy()
        dropped[label] = int((keep & ~present).sum())
        keep &= present
        cleaned["label"] = frame[label].to_numpy(dtype=object)
    table = pd.DataFrame(cleaned)[keep].reset_index(drop=True)
    return table, {column: count for column, count in dropped.items() if count}


def _label_ids(
    values: pd.Series, names: Sequence[str] | None, column: str, where: str
) -> tuple[np.ndarray | None, list[Any]]:
    """Integer labels as ints, or string labels as strings; `names` given: ids checked or mapped."""
    kind = _label_kind(values)
    if kind == "float":
        numbers = values.to_numpy(dtype=np.float64)
        fractional = numbers[np.abs(numbers - np.round(numbers)) > 0]
        if fractional.size:
            raise ValueError(
                f"classification labels must be integers or strings; {where} column {column!r} holds "
                f"{fractional[0]!r} (use task='regression' for numeric targets)"
            )
        kind = "int"
    raw = values.to_numpy(dtype=np.int64) if kind == "int" else values.astype(str).to_numpy(dtype=object)
    if names is None:
        return None, raw.tolist()
    if kind == "int":
        outside = raw[(raw < 0) | (raw >= len(names))]
        if outside.size:
            raise ValueError(
                f"{where} label {int(outside[0])} in column {column!r} is outside 0..{len(names) - 1} "
                f"for the label names {list(names)}"
            )
        return raw, []
    index = {name: i for i, name in enumerate(names)}
    unknown = next((v for v in raw if v not in index), None)
    if unknown is not None:
        raise ValueError(f"{where} label {unknown!r} in column {column!r} is not one of the label names {list(names)}")
    return np.array([index[v] for v in raw], dtype=np.int64), []


def _classification_labels(
    splits: dict[str, pd.Series], names: Sequence[str] | None, column: str
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Label ids of every split ("train" first) and the class names, with one mapping for all of them."""
    found = {split: _label_ids(values, names, column, split) for split, values in splits.items()}
    if names is None:
        raw = {split: values for split, (_, values) in found.items()}
        if len({type(v) for values in raw.values() for v in values}) > 1:
            raw = {split: [str(v) for v in values] for split, values in raw.items()}
        distinct = sorted({v for values in raw.values() for v in values})
        index = {value: i for i, value in enumerate(distinct)}
        names = [str(value) for value in distinct]
        ids = {split: np.array([index[v] for v in values], dtype=np.int64) for split, values in raw.items()}
    else:
        ids = {split: split_ids for split, (split_ids, _) in found.items()}
    present = sorted(set(ids["train"].tolist()))
    if len(present) < 2:
        kept = [names[i] for i in present]
        raise ValueError(
            f"classification needs at least two classes; the train labels in column {column!r} hold only {kept}"
        )
    return ids, list(names)


def _regression_labels(values: pd.Series, column: str, where: str) -> np.ndarray:
    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna().to_numpy() | pd.api.types.is_bool_dtype(values)
    if bad.any():
        raise ValueError(f"regression labels must be numbers; {where} column {column!r} holds {values[bad].iloc[0]!r}")
    result = numbers.to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(result)):
        raise ValueError(f"regression labels must be finite; {where} column {column!r} holds inf")
    return result.astype(np.float32)


def _resolve_columns(spec: DataSpec, source: _Source) -> tuple[str, _Columns]:
    """The task and its columns: the spec's names, else the preset's, else the usual names."""
    columns = [str(c) for c in source.train.columns]
    preset = source.preset or _Preset(task="")
    text = _pick(spec.text_column, preset.text_column, _TEXT_CANDIDATES, columns, "text")
    pair = _pick(spec.text_pair_column, preset.text_pair_column, (), columns, "text_pair")
    if text is None and spec.text_column is None and preset.text_column is None and pair is None:
        text, pair = next(((a, b) for a, b in _PAIR_CANDIDATES if a in columns and b in columns), (None, None))
    found = _Columns(
        text=text,
        text_pair=pair,
        label=_pick(spec.label_column, preset.label_column, _LABEL_CANDIDATES, columns, "label"),
        prompt=_pick(spec.prompt_column, None, _PROMPT_CANDIDATES, columns, "prompt"),
        response=_pick(spec.response_column, None, _RESPONSE_CANDIDATES, columns, "response"),
    )
    task = spec.task or preset.task or _infer_task(found, source.train, source.class_names)

    def need(name: str | None, role: str, given: str | None, default: str | None) -> str:
        return _require(name, role, task, given or default, columns)

    if task == "instruction":
        resolved = _Columns(
            prompt=need(found.prompt, "prompt", spec.prompt_column, None),
            response=need(found.response, "response", spec.response_column, None),
        )
    elif task == "causal_lm":
        resolved = _Columns(text=need(found.text, "text", spec.text_column, preset.text_column))
    else:
        text = need(found.text, "text", spec.text_column, preset.text_column)
        if found.text_pair is None and preset.text_pair_column is not None:  # the preset's pair is required
            need(None, "text_pair", None, preset.text_pair_column)
        label = need(found.label, "label", spec.label_column, preset.label_column)
        if label in (text, found.text_pair):
            role = "text" if label == text else "text pair"
            raise ValueError(
                f"column {label!r} would be both the {role} and the label; name the label column with "
                "--label-column (or another text column with --text-column)"
            )
        resolved = _Columns(text=text, text_pair=found.text_pair, label=label)
    wanted = [*resolved.texts(), *([resolved.label] if resolved.label else [])]
    held_out = (("validation", source.validation, source.validation_origin), ("test", source.test, source.test_origin))
    for split, frame, origin in held_out:
        missing = [] if frame is None else [c for c in wanted if c not in frame.columns]
        if missing:
            available = ", ".join(str(c) for c in frame.columns)
            raise ValueError(f"the {split} data ({origin}) lacks column {missing[0]!r}; available columns: {available}")
    return task, resolved


def _apply_labels(
    task: str, splits: dict[str, pd.DataFrame | None], column: str, names: Sequence[str] | None
) -> tuple[list[str] | None, int | None]:
    """Turn the "label" column of every split given ("train", then validation, test) into class ids or floats,
    in place; a split given as None is skipped.

    Returns:
        The class names and their count (classification), (None, 1) for regression, (None, None) otherwise.
    """
    frames = {split: frame for split, frame in splits.items() if frame is not None}
    if task == "classification":
        ids, label_names = _classification_labels(
            {split: frame["label"] for split, frame in frames.items()}, names, column
        )
        for split, frame in frames.items():
            frame["label"] = ids[split]
        return label_names, len(label_names)
    if task == "regression":
        for split, frame in frames.items():
            frame["label"] = _regression_labels(frame["label"], column, split)
        return None, 1
    return None, None
