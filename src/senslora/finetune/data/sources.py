"""Which kind of source a spec names (offline, GLUE, local file, hub dataset), and reading it into tables."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import datasets
import numpy as np
import pandas as pd

from senslora.finetune.data.files import _one_line, _read_table
from senslora.finetune.data.offline import _OFFLINE_LOADERS
from senslora.finetune.data.presets import (
    _OFFLINE_PRESETS,
    COMPRESSED_SUFFIXES,
    FILE_FORMATS,
    GLUE_HUB_NAME,
    GLUE_PRESETS,
    OFFLINE_SOURCES,
    _glue_task_name,
    _Preset,
)
from senslora.finetune.data.spec import DataSpec
from senslora.finetune.data.task_data import _Source


def _looks_like_path(source: str) -> bool:
    if source.startswith(("/", "./", "../", "~")):
        return True
    name = source.lower()
    for suffix in COMPRESSED_SUFFIXES:
        name = name.removesuffix(suffix)
    return Path(name).suffix.lstrip(".") in FILE_FORMATS


def _source_kind(spec: DataSpec) -> tuple[str, str]:
    source = spec.source.strip()
    if source.startswith("hub:"):
        return "hub", source[len("hub:") :]
    if source in _OFFLINE_LOADERS:
        return "offline", source
    glue_name = _glue_task_name(source)
    if glue_name is not None:
        return "glue", glue_name
    if source.lower().startswith("glue/"):
        raise ValueError(f"unknown GLUE task {source!r}; allowed: {', '.join(GLUE_PRESETS)}")
    if Path(source).expanduser().exists() or spec.file_format is not None or _looks_like_path(source):
        return "file", source
    if "/" in source:
        return "hub", source
    raise ValueError(
        f"unknown offline source {source!r}; known offline names: {', '.join(OFFLINE_SOURCES)}; "
        f"GLUE presets: {', '.join(GLUE_PRESETS)}; for a hub dataset give 'owner/name' or 'hub:name', "
        "for a local file its path"
    )


def _split_from_file(value: str, file_format: str | None, split: str) -> tuple[pd.DataFrame, str] | None:
    path = Path(value).expanduser()
    if path.is_file():
        return _read_table(path, file_format, what=f"{split} file"), f"file {str(path)!r}"
    return None


def _local_split_file(value: str, file_format: str | None, split: str, carved: str) -> tuple[pd.DataFrame, str]:
    """The held-out split of a local data file: another file (a file has no named splits)."""
    from_file = _split_from_file(value, file_format, split)
    if from_file is None:
        raise ValueError(
            f"{split}_split {value!r} is not an existing file; a local data file has no named splits "
            f"(give a {split} file, or None to carve {carved} out of train)"
        )
    return from_file


def _load_hub(name: str, spec: DataSpec, config_name: str | None, preset: _Preset | None, kind: str) -> _Source:
    label = f"dataset {name!r}" + (f" ({config_name})" if config_name else "")
    try:
        loaded = datasets.load_dataset(name, config_name) if config_name else datasets.load_dataset(name)
    except Exception as error:  # network, missing dataset, bad config: all end the same way for the user
        raise ValueError(
            f"{label} cannot be loaded: {_one_line(error)} (no network? use a local file or an offline name)"
        ) from None
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{label} did not load as named splits (got {type(loaded).__name__})")
    splits = list(loaded)
    if spec.train_split not in loaded:
        raise ValueError(f"{label} has no split {spec.train_split!r}; splits: {', '.join(splits)}")
    features = loaded[spec.train_split].features
    class_names = {
        column: list(feature.names) for column, feature in features.items() if isinstance(feature, datasets.ClassLabel)
    }

    def frame_of(split: str) -> tuple[pd.DataFrame, int]:
        frame = loaded[split].to_pandas()
        unlabelled = np.zeros(len(frame), dtype=bool)
        for column in class_names:  # -1 marks an unlabelled row (GLUE test splits)
            if column in frame:
                unlabelled |= frame[column].to_numpy() < 0
        return frame[~unlabelled].reset_index(drop=True), int(unlabelled.sum())

    def named(value: str, split: str) -> tuple[pd.DataFrame, str, int]:
        """A held-out split given by name: the dataset's split of that name, else a file."""
        if value in loaded:
            frame, unlabelled = frame_of(value)
            return frame, f"split {value!r}", unlabelled
        from_file = _split_from_file(value, spec.file_format, split)
        if from_file is None:
            raise ValueError(f"{label} has no split {value!r} and no such file exists; splits: {', '.join(splits)}")
        return *from_file, 0

    train, unlabelled_train = frame_of(spec.train_split)
    validation, origin, unlabelled_validation = None, None, 0
    wanted = spec.validation_split if spec.validation_split is not None else (preset and preset.validation_split)
    if wanted:
        validation, origin, unlabelled_validation = named(wanted, "validation")

    # The test split: the one named, else the dataset's own labelled "test" split (GLUE's test labels are
    # hidden: that one is left for a carve from train).
    test, test_origin, unlabelled_test = None, None, 0
    if spec.test_split is not None:
        test, test_origin, unlabelled_test = named(spec.test_split, "test")
        if spec.test_split in loaded and test.empty:
            raise ValueError(f"{label} split {spec.test_split!r} has no labelled rows to test on")
    elif spec.test_examples and "test" in loaded and "test" not in (spec.train_split, wanted):
        own, unlabelled = frame_of("test")
        if not own.empty:
            test, test_origin, unlabelled_test = own, "split 'test'", unlabelled
    details = {"splits": splits, "unlabelled_rows_dropped": unlabelled_train + unlabelled_validation + unlabelled_test}
    location = f"{name} ({config_name})" if config_name else name
    return _Source(kind, location, train, validation, origin, preset, class_names, details, test, test_origin)


def _load_source(spec: DataSpec) -> _Source:
    kind, key = _source_kind(spec)
    preset = None if spec.preset is None else GLUE_PRESETS[_glue_task_name(spec.preset) or ""]
    if kind == "glue":
        if spec.preset is not None and _glue_task_name(spec.preset) != key:
            raise ValueError(f"source {spec.source!r} is GLUE task {key!r} but preset is {spec.preset!r}")
        if spec.config_name is not None and spec.config_name != key:
            raise ValueError(f"source {spec.source!r} is GLUE task {key!r}; config_name must be None or {key!r}")
        return _load_hub(GLUE_HUB_NAME, spec, key, GLUE_PRESETS[key], "glue")
    if kind == "hub":
        return _load_hub(key, spec, spec.config_name, preset, "hub")
    if spec.config_name is not None:
        raise ValueError(f"config_name applies to hub datasets only, not to source {spec.source!r}")
    if kind == "offline":
        if spec.preset is not None:
            raise ValueError(f"preset applies to local files and hub datasets, not to offline source {key!r}")
        if spec.validation_split is not None:
            raise ValueError(
                f"offline source {key!r} ships a single table; leave the validation data unset (--validation-data, "
                "DataSpec.validation_split) so that validation_fraction of it is carved out"
            )
        if spec.test_split is not None:
            raise ValueError(
                f"offline source {key!r} ships a single table; leave the test data unset (--test-data, "
                "DataSpec.test_split) so that a test split of test_examples rows is carved out"
            )
        if spec.train_split != "train":
            raise ValueError(f"offline source {key!r} has only a 'train' split, not {spec.train_split!r}")
        table, location, details = _OFFLINE_LOADERS[key]()
        return _Source("offline", location, table, None, None, _OFFLINE_PRESETS[key], {}, details)
    path = Path(key).expanduser()
    train = _read_table(path, spec.file_format)
    validation, origin = None, None
    if spec.validation_split is not None:
        validation, origin = _local_split_file(
            spec.validation_split, spec.file_format, "validation", "validation_fraction"
        )
    test, test_origin = None, None
    if spec.test_split is not None:
        test, test_origin = _local_split_file(spec.test_split, spec.file_format, "test", "test_examples rows")
    return _Source("file", str(path), train, validation, origin, preset, {}, {}, test, test_origin)
