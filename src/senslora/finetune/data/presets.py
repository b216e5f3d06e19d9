"""What the data layer knows by name: tasks, file formats, offline sources, metrics and the GLUE presets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from senslora.finetune.evaluation.task_metrics import greater_is_better

TASKS = ("classification", "regression", "causal_lm", "instruction")
FILE_FORMATS = ("csv", "tsv", "json", "jsonl", "txt")
COMPRESSED_SUFFIXES = (".gz", ".bz2")
OFFLINE_SOURCES = ("rotten_tomatoes", "convention_speeches", "wikipedia", "hamlet")
GLUE_HUB_NAME = "nyu-mll/glue"
IGNORE_INDEX = -100
# A wikipedia or hamlet paragraph must be longer than this many characters.
MIN_PARAGRAPH_CHARS = 40
PLAIN_INSTRUCTION_TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"

TASK_METRICS = {
    "classification": (("accuracy",), "accuracy"),
    "regression": (("pearson", "spearman"), "pearson"),
    "causal_lm": (("perplexity",), "perplexity"),
    "instruction": (("bleu4", "rouge1", "rougeL"), "rougeL"),
}


@dataclass(frozen=True)
class _Preset:
    """Defaults a named source brings: task, columns, label names, metrics, validation split."""

    task: str
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    label_names: tuple[str, ...] | None = None
    metric_names: tuple[str, ...] | None = None
    main_metric: str | None = None
    validation_split: str | None = None


def _glue(
    first: str,
    second: str | None,
    names: tuple[str, ...] | None,
    metrics: tuple[str, ...],
    task: str = "classification",
    validation_split: str = "validation",
) -> _Preset:
    return _Preset(task, first, second, "label", names, metrics, metrics[0], validation_split)


_ENTAILMENT = ("entailment", "not_entailment")
GLUE_PRESETS = {
    "cola": _glue("sentence", None, ("unacceptable", "acceptable"), ("matthews_correlation", "accuracy")),
    "sst2": _glue("sentence", None, ("negative", "positive"), ("accuracy",)),
    "mrpc": _glue("sentence1", "sentence2", ("not_equivalent", "equivalent"), ("f1", "accuracy")),
    "qqp": _glue("question1", "question2", ("not_duplicate", "duplicate"), ("f1", "accuracy")),
    "stsb": _glue("sentence1", "sentence2", None, ("pearson", "spearman"), task="regression"),
    "mnli": _glue(
        "premise", "hypothesis", ("entailment", "neutral", "contradiction"), ("accuracy",),
        validation_split="validation_matched",
    ),
    "qnli": _glue("question", "sentence", _ENTAILMENT, ("accuracy",)),
    "rte": _glue("sentence1", "sentence2", _ENTAILMENT, ("accuracy",)),
}  # fmt: skip

_OFFLINE_PRESETS = {
    "rotten_tomatoes": _Preset("classification", "text", None, "label", ("rotten", "fresh")),
    "convention_speeches": _Preset("classification", "text", None, "label", ("democrat", "republican")),
    "wikipedia": _Preset("causal_lm", "text"),
    "hamlet": _Preset("causal_lm", "text"),
}


def glue_preset(name: str) -> dict[str, Any]:
    """The columns, label names, metrics and splits of a GLUE task ("sst2" or "glue/sst2").

    Raises:
        ValueError: not one of the eight GLUE tasks.
    """
    task_name = _glue_task_name(name)
    if task_name is None:
        raise ValueError(f"unknown GLUE task {name!r}; allowed: {', '.join(GLUE_PRESETS)}")
    preset = GLUE_PRESETS[task_name]
    return {
        "name": task_name,
        "hub_name": GLUE_HUB_NAME,
        "config_name": task_name,
        "task": preset.task,
        "text_column": preset.text_column,
        "text_pair_column": preset.text_pair_column,
        "label_column": preset.label_column,
        "label_names": None if preset.label_names is None else list(preset.label_names),
        "metric_names": list(preset.metric_names or ()),
        "main_metric": preset.main_metric,
        "greater_is_better": greater_is_better(preset.main_metric or ""),
        "train_split": "train",
        "validation_split": preset.validation_split,
    }


def _glue_task_name(name: str) -> str | None:
    lowered = name.strip().lower()
    if lowered.startswith("glue/"):
        lowered = lowered[len("glue/") :]
    return lowered if lowered in GLUE_PRESETS else None
