"""Tokenising task data and batching it: what the model, the estimators and the training loop consume.

`tokenize_dataset` turns a `TaskData` split into token ids for its task: classification and regression
(text or text pairs, with labels), causal language modelling (texts concatenated and cut into blocks of
`max_length`), instruction tuning (prompt + response, the loss on the response only: prompt positions get
label IGNORE_INDEX). `tokenize_texts` takes plain texts (label-free calibration). The collators pad a list of
examples into a batch (right padding; left padding for generation); `make_batches` and `make_dataloader`
build the fixed calibration batches and the training loader.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import torch

from senslora.finetune.data import IGNORE_INDEX, PLAIN_INSTRUCTION_TEMPLATE, TASKS, TaskData


def _check_max_length(max_length: int) -> None:
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an integer >= 2, got {max_length!r}")


def _column(dataset: datasets.Dataset, name: str | None, role: str) -> list[Any]:
    if name is None or name not in dataset.column_names:
        raise ValueError(f"the dataset lacks the {role} column {name!r}; columns: {', '.join(dataset.column_names)}")
    return list(dataset[name])


def _sequence_features(names: Sequence[str]) -> dict[str, Any]:
    return {name: datasets.Sequence(datasets.Value("int64")) for name in names}


def _tokenize_labelled(dataset: datasets.Dataset, tokenizer: Any, data: TaskData, max_length: int) -> datasets.Dataset:
    texts = _column(dataset, data.text_column, "text")
    pairs = _column(dataset, data.text_pair_column, "text pair") if data.text_pair_column else None
    encoded = tokenizer(texts, pairs, truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
    columns = {k: encoded[k] for k in keys}
    features = _sequence_features(keys)
    if "label" in dataset.column_names:
        columns["labels"] = list(dataset["label"])
        features["labels"] = datasets.Value("int64" if data.task == "classification" else "float32")
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def _tokenize_causal(dataset: datasets.Dataset, tokenizer: Any, data: TaskData, max_length: int) -> datasets.Dataset:
    texts = _column(dataset, data.text_column, "text")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("causal_lm tokenisation joins texts with the end-of-sequence token; the tokenizer has none")
    pieces = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    stream = np.fromiter((t for piece in pieces for t in [*piece, eos]), dtype=np.int64)
    blocks = len(stream) // max_length
    if blocks == 0:
        raise ValueError(f"the texts hold {len(stream)} tokens, fewer than one block of max_length {max_length}")
    ids = stream[: blocks * max_length].reshape(blocks, max_length).tolist()
    columns = {"input_ids": ids, "attention_mask": [[1] * max_length] * blocks, "labels": ids}
    return datasets.Dataset.from_dict(columns, features=datasets.Features(_sequence_features(columns)))


def _prompt_and_response_texts(tokenizer: Any, prompt: str, response: str) -> tuple[str, str, bool]:
    """Prompt text (ends where generation starts), response text, and whether a template was used."""
    if getattr(tokenizer, "chat_template", None):
        user = [{"role": "user", "content": prompt}]
        prompt_text = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template([*user, {"role": "assistant", "content": response}], tokenize=False)
        if full.startswith(prompt_text):
            return prompt_text, full[len(prompt_text) :], True
        return prompt_text, response, True
    return PLAIN_INSTRUCTION_TEMPLATE.format(prompt=prompt), response, False


def _tokenize_instruction(
    dataset: datasets.Dataset, tokenizer: Any, data: TaskData, max_length: int
) -> datasets.Dataset:
    prompts = _column(dataset, data.prompt_column, "prompt")
    responses = _column(dataset, data.response_column, "response")
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    rows: dict[str, list[Any]] = {
        k: [] for k in ("input_ids", "attention_mask", "labels", "prompt_input_ids", "reference")
    }
    for prompt, response in zip(prompts, responses, strict=True):
        prompt_text, response_text, templated = _prompt_and_response_texts(tokenizer, prompt, response)
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        if not templated and bos is not None and bos != eos:
            prompt_ids = [bos, *prompt_ids]
        response_ids = tokenizer(response_text, add_special_tokens=False)["input_ids"]
        if eos is not None and eos not in response_ids:
            response_ids = [*response_ids, eos]
        # Too long: the prompt keeps its last tokens, at least half of max_length; the response is cut at the end.
        prompt_budget = min(len(prompt_ids), max(max_length - len(response_ids), max_length // 2))
        prompt_ids = prompt_ids[len(prompt_ids) - prompt_budget :]
        response_ids = response_ids[: max_length - prompt_budget]
        rows["input_ids"].append(prompt_ids + response_ids)
        rows["attention_mask"].append([1] * (len(prompt_ids) + len(response_ids)))
        rows["labels"].append([IGNORE_INDEX] * len(prompt_ids) + response_ids)
        rows["prompt_input_ids"].append(prompt_ids)
        rows["reference"].append(response)
    features = _sequence_features(["input_ids", "attention_mask", "labels", "prompt_input_ids"])
    features["reference"] = datasets.Value("string")
    return datasets.Dataset.from_dict(rows, features=datasets.Features(features))


def tokenize_dataset(dataset: datasets.Dataset, tokenizer: Any, data: TaskData, *, max_length: int) -> datasets.Dataset:
    """Model-ready columns for `data.task`.

    - classification / regression: input_ids, attention_mask (token_type_ids if the tokenizer makes them),
      labels (int64 / float32; left out when the dataset has no "label"), truncated to max_length.
    - causal_lm: every text + eos, concatenated and cut into blocks of exactly max_length tokens (the
      remainder is dropped); labels = input_ids.
    - instruction: prompt formatted by the tokenizer's chat template (user turn = prompt, assistant turn =
      response) or, without one, PLAIN_INSTRUCTION_TEMPLATE (bos first if the tokenizer has a distinct one);
      prompt and response are tokenised separately, eos appended to the response if absent; labels are -100
      on the prompt tokens. Also "prompt_input_ids" (what generation starts from) and "reference" (the
      response text).

    Raises:
        ValueError: max_length < 2, a missing column, or too few tokens for one causal_lm block.
    """
    _check_max_length(max_length)
    if data.task in ("classification", "regression"):
        return _tokenize_labelled(dataset, tokenizer, data, max_length)
    if data.task == "causal_lm":
        return _tokenize_causal(dataset, tokenizer, data, max_length)
    if data.task == "instruction":
        return _tokenize_instruction(dataset, tokenizer, data, max_length)
    raise ValueError(f"unknown task {data.task!r}; allowed: {', '.join(TASKS)}")


def tokenize_texts(
    dataset: datasets.Dataset, tokenizer: Any, *, max_length: int, text_column: str = "text"
) -> datasets.Dataset:
    """input_ids and attention_mask of each text, truncated to max_length, without labels (calibration
    of the label-free `activation` estimator from any text source)."""
    _check_max_length(max_length)
    encoded = tokenizer(_column(dataset, text_column, "text"), truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
    return datasets.Dataset.from_dict(
        {k: encoded[k] for k in keys}, features=datasets.Features(_sequence_features(keys))
    )


# ---------------------------------------------------------------------------------------------- batching


def _pad_token_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad token nor an eos token to pad with; set tokenizer.pad_token")
    return int(pad)


def _padded_length(longest: int, multiple: int | None) -> int:
    return longest if multiple is None else -(-longest // multiple) * multiple


@dataclass(frozen=True)
class PaddingCollator:
    """Pads a list of tokenised examples to the longest one (rounded up to `pad_to_multiple_of`).

    Right padding: input_ids with `pad_token_id`, attention_mask and token_type_ids with 0, sequence labels
    (causal_lm, instruction) with -100. Scalar labels become int64 (classification) or float32 (regression).
    Other columns (prompt_input_ids, reference) are left out.
    """

    pad_token_id: int
    task: str
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if len(features) == 0:
            raise ValueError("cannot collate an empty batch")
        lengths = [len(f["input_ids"]) for f in features]
        width = _padded_length(max(lengths), self.pad_to_multiple_of)
        batch = {"input_ids": torch.full((len(features), width), self.pad_token_id, dtype=torch.long)}
        batch["attention_mask"] = torch.zeros((len(features), width), dtype=torch.long)
        if "token_type_ids" in features[0]:
            batch["token_type_ids"] = torch.zeros((len(features), width), dtype=torch.long)
        sequence_labels = self.task in ("causal_lm", "instruction") and "labels" in features[0]
        if sequence_labels:
            batch["labels"] = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        for row, (feature, length) in enumerate(zip(features, lengths, strict=True)):
            batch["input_ids"][row, :length] = torch.as_tensor(feature["input_ids"], dtype=torch.long)
            mask = feature.get("attention_mask")
            batch["attention_mask"][row, :length] = 1 if mask is None else torch.as_tensor(mask, dtype=torch.long)
            if "token_type_ids" in batch:
                batch["token_type_ids"][row, :length] = torch.as_tensor(feature["token_type_ids"], dtype=torch.long)
            if sequence_labels:
                batch["labels"][row, :length] = torch.as_tensor(feature["labels"], dtype=torch.long)
        if not sequence_labels and "labels" in features[0]:
            dtype = torch.float32 if self.task == "regression" else torch.long
            batch["labels"] = torch.as_tensor([f["labels"] for f in features], dtype=dtype)
        return batch


@dataclass(frozen=True)
class GenerationCollator:
    """Left-pads "prompt_input_ids" into input_ids / attention_mask for generation; "references" holds the
    reference texts (a list of strings, not a tensor)."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if len(features) == 0:
            raise ValueError("cannot collate an empty batch")
        lengths = [len(f["prompt_input_ids"]) for f in features]
        width = _padded_length(max(lengths), self.pad_to_multiple_of)
        input_ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, (feature, length) in enumerate(zip(features, lengths, strict=True)):
            if length:
                input_ids[row, width - length :] = torch.as_tensor(feature["prompt_input_ids"], dtype=torch.long)
                attention_mask[row, width - length :] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "references": [f["reference"] for f in features],
        }


def _check_multiple(pad_to_multiple_of: int | None) -> None:
    if pad_to_multiple_of is not None and (
        isinstance(pad_to_multiple_of, bool) or not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of < 1
    ):
        raise ValueError(f"pad_to_multiple_of must be a positive integer or None, got {pad_to_multiple_of!r}")


def make_collator(tokenizer: Any, task: str, *, pad_to_multiple_of: int | None = None) -> PaddingCollator:
    """A collator padding training/evaluation batches of `task` (see PaddingCollator)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; allowed: {', '.join(TASKS)}")
    _check_multiple(pad_to_multiple_of)
    return PaddingCollator(_pad_token_id(tokenizer), task, pad_to_multiple_of)


def make_generation_collator(tokenizer: Any, *, pad_to_multiple_of: int | None = None) -> GenerationCollator:
    """A collator left-padding instruction prompts for generation (see GenerationCollator)."""
    _check_multiple(pad_to_multiple_of)
    return GenerationCollator(_pad_token_id(tokenizer), pad_to_multiple_of)


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def make_batches(
    dataset_tokenized: datasets.Dataset,
    collator: Callable[[Sequence[Mapping[str, Any]]], dict[str, Any]],
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """All batches of a tokenised dataset, in order or in a seeded random order (the last may be smaller)."""
    _check_batch_size(batch_size)
    size = len(dataset_tokenized)
    order = np.random.default_rng(seed).permutation(size) if shuffle else np.arange(size)
    batches = []
    for start in range(0, size, batch_size):
        part = dataset_tokenized[order[start : start + batch_size].tolist()]
        names = list(part)
        rows = [dict(zip(names, values, strict=True)) for values in zip(*(part[n] for n in names), strict=True)]
        batches.append(collator(rows))
    return batches


def make_dataloader(
    dataset_tokenized: datasets.Dataset,
    collator: Callable[[Sequence[Mapping[str, Any]]], dict[str, Any]],
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
) -> torch.utils.data.DataLoader:
    """A torch DataLoader over a tokenised dataset; shuffling draws from a generator seeded with `seed`."""
    _check_batch_size(batch_size)
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return torch.utils.data.DataLoader(
        dataset_tokenized,  # type: ignore[arg-type]
        batch_size=batch_size,
        shuffle=shuffle,
        collate_fn=collator,
        generator=generator,
        num_workers=num_workers,
        drop_last=drop_last,
    )
