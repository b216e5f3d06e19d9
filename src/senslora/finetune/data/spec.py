"""`DataSpec`: what to load, as plain JSON-able data, checked when it is built."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from senslora.finetune.data.presets import FILE_FORMATS, GLUE_PRESETS, TASKS, _glue_task_name


@dataclass(frozen=True)
class DataSpec:
    """What to load. Plain data: `to_dict()` / `from_dict()` round-trip through JSON.

    Attributes:
        source: an offline name (OFFLINE_SOURCES), a GLUE preset ("sst2" or "glue/sst2"), a local file path,
            or a hub dataset "owner/name" ("hub:name" for a name without owner).
        task: one of TASKS; None infers it from the preset, else from the columns: prompt and response
            columns -> instruction; a label column holding a fractional number -> regression, of whole
            numbers or strings -> classification; text only -> causal_lm.
        text_column, text_pair_column, label_column, prompt_column, response_column: column names;
            None takes the preset's or a usual name ("text", "sentence", "label", "prompt", "response", ...).
        config_name: hub dataset configuration.
        train_split: split to train on (hub datasets; a local file is its own train split).
        validation_split: a split name (hub), a file path, or None to carve `validation_fraction` of train out
            (GLUE presets default to their validation split).
        validation_fraction: share of train carved out as validation, in (0, 1).
        max_train_examples, max_validation_examples: keep a seeded random subset of at most this many.
        test_split: a split name (hub) or a file path to test on, or None: a hub dataset's own labelled
            "test" split when it has one, else a carve from train (see `test_examples`).
        test_examples: the test split's size: a carve takes at most this many rows (and at most a fifth) out
            of train, before validation is carved and train capped; a given or hub test split keeps a sample
            of at most this many. Its seed is fixed, so every run seed shares it. 0: no test split.
        seed: seed of every random choice.
        file_format: csv, tsv, json, jsonl or txt; None reads it from the file suffix.
        preset: a GLUE preset whose columns, label names and metrics apply to a local file or hub dataset.
    """

    source: str
    task: str | None = None
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    prompt_column: str | None = None
    response_column: str | None = None
    config_name: str | None = None
    train_split: str = "train"
    validation_split: str | None = None
    validation_fraction: float = 0.1
    max_train_examples: int | None = None
    max_validation_examples: int | None = None
    test_split: str | None = None
    test_examples: int = 0
    seed: int = 0
    file_format: str | None = None
    preset: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source.strip():
            raise ValueError(f"source must be a non-empty string, got {self.source!r}")
        if self.task is not None and self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; allowed: {', '.join(TASKS)}")
        if self.file_format is not None and self.file_format not in FILE_FORMATS:
            raise ValueError(f"unknown file_format {self.file_format!r}; allowed: {', '.join(FILE_FORMATS)}")
        if self.preset is not None and _glue_task_name(self.preset) is None:
            raise ValueError(f"unknown preset {self.preset!r}; allowed: {', '.join(GLUE_PRESETS)}")
        fraction = self.validation_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
            raise ValueError(f"validation_fraction must lie strictly between 0 and 1, got {fraction!r}")
        for name in ("max_train_examples", "max_validation_examples"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        count = self.test_examples
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"test_examples must be a non-negative integer, got {count!r}")
        if self.test_split is not None:
            if not isinstance(self.test_split, str) or not self.test_split.strip():
                raise ValueError(f"test_split must be a non-empty string or None, got {self.test_split!r}")
            if count == 0:
                raise ValueError("test_split is given but test_examples is 0 (no test split); give test_examples > 0")
            if self.test_split in (self.train_split, self.validation_split):
                raise ValueError(f"test_split {self.test_split!r} is also the train or validation split")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not isinstance(self.train_split, str) or not self.train_split:
            raise ValueError(f"train_split must be a non-empty string, got {self.train_split!r}")

    def to_dict(self) -> dict[str, Any]:
        """The spec as a JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataSpec:
        """Rebuild a spec from `to_dict()` output; unknown keys are an error."""
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise ValueError(f"unknown data spec keys {unknown}; allowed: {', '.join(allowed)}")
        if "source" not in data:
            raise ValueError("a data spec needs a 'source'")
        return cls(**dict(data))
