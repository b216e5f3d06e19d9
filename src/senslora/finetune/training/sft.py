"""Instruction data through TRL's `SFTTrainer`: prompt/completion examples, the loss on the completion only.

`instruction_dataset` turns an instruction split into TRL's prompt/completion format:

- the tokenizer has a chat template: conversational examples, prompt = [{"role": "user", "content": p}],
  completion = [{"role": "assistant", "content": r}]; TRL renders the prompt with the generation prompt and
  the whole conversation with the template, and the completion is what follows the prompt;
- no chat template: plain strings, prompt = PLAIN_INSTRUCTION_TEMPLATE with p, completion = r; TRL appends
  the eos token to the completion and tokenizes prompt and prompt + completion with the tokenizer's own
  special tokens.

TRL then builds the labels (-100 on the prompt tokens: `completion_only_loss=True`), cuts each sequence at
`max_length` keeping its start (`truncation_mode="keep_start"`), drops examples left without a completion
token, and pads with its own collator. The loss of a micro-batch is the mean cross-entropy over its
completion tokens,

    loss = - sum_{t in completion} log p(x_t | x_<t) / |completion tokens|,

and accumulation averages the micro-batches (as every other task: `model_accepts_loss_kwargs = False`).
`SensloraSFTTrainer` is SFTTrainer with `SensloraTrainerMixin` on top, so it keeps every guarantee of
`senslora.finetune.training.trainer` (data order, schedule, NaN guard, checkpoints and resume, log, best
adapter, the task's own evaluation with greedy generation). AdaLoRA is the exception: SFTTrainer computes
its loss from its fused log-probabilities and so leaves out the orthogonality penalty AdaLoRA adds to the
model's loss, so AdaLoRA trains instruction data on the plain Trainer (`uses_sft_trainer`).
"""

from __future__ import annotations

from typing import Any

import datasets

from senslora.finetune.data import PLAIN_INSTRUCTION_TEMPLATE, TaskData
from senslora.finetune.methods import get_method
from senslora.finetune.training.trainer import SensloraTrainerMixin

TRL_REQUIREMENT = "trl>=1.16,<2"


def uses_sft_trainer(task: str, method: str) -> bool:
    """Instruction data trains on SFTTrainer, except AdaLoRA (whose orthogonality penalty SFTTrainer's loss drops)."""
    return task == "instruction" and get_method(method).trains_on_sft_trainer


def check_trl_available() -> None:
    """Raise ValueError (before any model is loaded) if TRL, which trains instruction data, is missing."""
    try:
        import trl  # noqa: F401
    except ImportError:
        raise ValueError(
            f"the instruction task trains with TRL's SFTTrainer; install it: pip install 'senslora[sft]' "
            f"(or '{TRL_REQUIREMENT}')"
        ) from None


def instruction_dataset(dataset: datasets.Dataset, tokenizer: Any, data: TaskData) -> datasets.Dataset:
    """The prompt/completion dataset TRL trains on (see the module docstring for the two formats)."""
    for role, column in (("prompt", data.prompt_column), ("response", data.response_column)):
        if column is None or column not in dataset.column_names:
            raise ValueError(
                f"the dataset lacks the {role} column {column!r}; columns: {', '.join(dataset.column_names)}"
            )
    prompts, responses = list(dataset[data.prompt_column]), list(dataset[data.response_column])
    if getattr(tokenizer, "chat_template", None):
        rows = {
            "prompt": [[{"role": "user", "content": p}] for p in prompts],
            "completion": [[{"role": "assistant", "content": r}] for r in responses],
        }
    else:
        rows = {"prompt": [PLAIN_INSTRUCTION_TEMPLATE.format(prompt=p) for p in prompts], "completion": responses}
    return datasets.Dataset.from_dict(rows)


def sft_arguments(max_length: int) -> dict[str, Any]:
    """The SFTConfig fields senslora sets beyond TrainingArguments: completion-only loss, no packing,
    truncation at max_length keeping the start; gradient checkpointing and bf16 stay off unless asked
    for (SFTConfig would turn them on), as senslora's own options decide them."""
    return {
        "max_length": max_length,
        "completion_only_loss": True,
        "packing": False,
        "padding_free": False,
        "truncation_mode": "keep_start",
        "dataset_num_proc": None,
    }


def sft_trainer_class() -> type[SensloraTrainerMixin]:
    """SFTTrainer with senslora's overrides (imported here: TRL is needed for instruction data only)."""
    check_trl_available()
    from trl import SFTConfig, SFTTrainer

    class SensloraSFTTrainer(SensloraTrainerMixin, SFTTrainer):
        """TRL's SFTTrainer with senslora's data order, schedule, checks, log and best adapter."""

        arguments_class = SFTConfig

        def __init__(self, *args: Any, run: Any, **kwargs: Any) -> None:
            self.run = run
            super().__init__(*args, **kwargs)
            self.model_accepts_loss_kwargs = False  # each micro-batch's mean loss / accumulation, as before
            if len(self.train_dataset) == 0:
                raise ValueError("no training example keeps a completion token within max_length; raise --max-length")

    return SensloraSFTTrainer


def placeholder_eval_dataset() -> datasets.Dataset:
    """One tokenized row: Trainer wants an eval dataset for its evaluation schedule, but evaluation runs the
    task's own `evaluate` (perplexity over the response tokens, greedy generation) on the validation split."""
    return datasets.Dataset.from_dict({"input_ids": [[0, 0]], "labels": [[0, 0]]})
