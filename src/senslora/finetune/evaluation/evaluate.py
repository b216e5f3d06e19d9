"""Evaluate a (PEFT) model on a tokenized validation split with the task's metrics.

- classification: argmax of the logits against the labels (accuracy, F1, Matthews correlation);
- regression: the single logit against the target (Pearson, Spearman);
- causal_lm / instruction: perplexity = exp(sum of token losses / number of target tokens), the losses
  summed over every non-ignored next-token target (for instructions: response tokens only);
- instruction: also greedy generation from the prompt, scored with BLEU-4, ROUGE-1 and ROUGE-L.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from senslora.finetune.data import TaskData
from senslora.finetune.evaluation.task_metrics import compute_metrics
from senslora.finetune.tokenization import make_generation_collator

GENERATION_METRICS = ("bleu4", "rouge1", "rougeL")


def _batches(dataset: Sequence[Any], collate: Callable, batch_size: int, progress: bool, description: str):
    for start in tqdm(range(0, len(dataset), batch_size), desc=description, disable=not progress, leave=False):
        yield collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])


def _token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """Sum of next-token cross-entropies and the count of targets (labels != -100)."""
    shifted_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    shifted_labels = labels[:, 1:].reshape(-1)
    loss = F.cross_entropy(shifted_logits, shifted_labels, ignore_index=-100, reduction="sum")
    return float(loss), int((shifted_labels != -100).sum())


@torch.no_grad()
def generate_texts(
    model: nn.Module,
    tokenizer: Any,
    dataset: Sequence[Any],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 64,
    progress: bool = True,
) -> tuple[list[str], list[str]]:
    """Greedy continuations of each example's prompt (left-padded), and the references."""
    collate = make_generation_collator(tokenizer)
    device = next(model.parameters()).device
    predictions: list[str] = []
    references: list[str] = []
    for batch in _batches(dataset, collate, batch_size, progress, "generating"):
        inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask")}
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        predictions += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        references += list(batch["references"])
    return predictions, references


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    dataset: Sequence[Any],
    collate: Callable[[list[Any]], dict[str, torch.Tensor]],
    data: TaskData,
    *,
    batch_size: int = 64,
    tokenizer: Any = None,
    max_generation_examples: int = 32,
    max_new_tokens: int = 64,
    progress: bool = True,
) -> dict[str, float]:
    """The task's metrics (data.metric_names) on `dataset`, plus the mean loss.

    Raises:
        ValueError: empty dataset, or generation metrics without a tokenizer.
    """
    if len(dataset) == 0:
        raise ValueError("the validation split is empty")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    predictions: list[Any] = []
    references: list[Any] = []
    loss_sum, token_count, example_loss, examples = 0.0, 0, 0.0, 0
    try:
        for batch in _batches(dataset, collate, batch_size, progress, "evaluating"):
            batch = {k: v.to(device) for k, v in batch.items()}
            outputs = model(**batch)
            labels = batch["labels"]
            if data.task in ("causal_lm", "instruction"):
                batch_loss, batch_tokens = _token_loss_sum(outputs.logits, labels)
                loss_sum += batch_loss
                token_count += batch_tokens
            else:
                example_loss += float(outputs.loss) * labels.shape[0]
                examples += labels.shape[0]
                logits = outputs.logits.float()
                if data.task == "regression":
                    predictions += logits.reshape(-1).tolist()
                else:
                    predictions += logits.argmax(-1).tolist()
                references += labels.tolist()
        metrics: dict[str, float] = {}
        if data.task in ("causal_lm", "instruction"):
            if token_count == 0:
                raise ValueError("the validation split has no target tokens")
            metrics["loss"] = loss_sum / token_count
            metrics.update(compute_metrics(["perplexity"], None, None, loss_sum=loss_sum, num_tokens=token_count))
            wanted = [m for m in data.metric_names if m in GENERATION_METRICS]
            if wanted and max_generation_examples > 0:
                if tokenizer is None:
                    raise ValueError("generation metrics need the tokenizer")
                subset = [dataset[i] for i in range(min(len(dataset), max_generation_examples))]
                texts, refs = generate_texts(model, tokenizer, subset, max_new_tokens=max_new_tokens, progress=progress)
                metrics.update(compute_metrics(wanted, texts, refs))
        else:
            metrics["loss"] = example_loss / examples
            metrics.update(compute_metrics(data.metric_names, predictions, references))
        return metrics
    finally:
        model.train(was_training)
