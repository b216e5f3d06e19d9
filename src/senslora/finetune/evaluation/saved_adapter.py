"""Evaluating a saved adapter: stock PEFT loads it onto the base model, after checks that it fits.

Only safetensors weights are loaded (pickled `.bin` weights could run code); an adapter made for another
model, task or number of labels is refused with the module or weight that differs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
from torch import nn

from senslora.core.targets import layer_shape
from senslora.finetune.config import RunConfig
from senslora.finetune.data import TaskData
from senslora.finetune.evaluation.evaluate import evaluate_model
from senslora.finetune.preparation import Prepared, prepare
from senslora.finetune.tokenization import make_collator, tokenize_dataset
from senslora.utils.io import read_text

ADAPTER_WEIGHTS = "adapter_model.safetensors"


SPLITS = ("validation", "test")


def evaluate_adapter(
    config: RunConfig, adapter_dir: str | Path, split: str = "validation", prepared: Prepared | None = None
) -> dict[str, float]:
    """Load the base model and a saved adapter with stock PEFT, and evaluate on the run's `split`.

    Args:
        split: "validation" or "test" (the held-out split `--test-examples` carves).
        prepared: the base model, tokenizer and data if already loaded (an unwrapped base model).
    """
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    config.validate()
    adapter_config = read_adapter_config(adapter_dir)
    prepared = prepared if prepared is not None else prepare(config)
    split_rows(prepared.data, split)  # a missing split is refused before the adapter loads
    check_adapter_fits(prepared.model, adapter_dir, adapter_config, prepared.data.task)
    # PEFT's AdaLoRA forward adds its orthogonality penalty to any loss it computes, reading the trainable
    # adapter's settings, which only a trainable load records; evaluation runs in eval mode either way.
    trainable = str(adapter_config.get("peft_type", "")).upper() == "ADALORA"
    try:
        model = PeftModel.from_pretrained(prepared.model, adapter_dir, is_trainable=trainable).to(prepared.device)
    except (OSError, RuntimeError, KeyError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"adapter {str(adapter_dir)!r} does not fit model {config.model!r}: {first}") from None
    return evaluate_on_split(config, prepared, model, split)


def split_rows(data: TaskData, split: str) -> datasets.Dataset:
    """The rows of one split of the run's data; a test split the run does not have is refused."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    if split == "test" and data.test is None:
        raise ValueError("this data has no test split (--test-examples 0, or too few rows to hold one out)")
    return data.validation if split == "validation" else data.test


def evaluate_on_split(
    config: RunConfig, prepared: Prepared, model: nn.Module, split: str = "validation"
) -> dict[str, float]:
    """The task's metrics of `model` (an adapted or the bare base model) on the run's validation or test split."""
    data = prepared.data
    rows = tokenize_dataset(split_rows(data, split), prepared.tokenizer, data, max_length=config.max_length)
    return evaluate_model(
        model,
        rows,
        make_collator(prepared.tokenizer, data.task),
        data,
        batch_size=config.eval_batch_size,
        tokenizer=prepared.tokenizer,
        max_generation_examples=config.max_generation_examples,
        max_new_tokens=config.max_new_tokens,
        progress=config.progress,
    )


def read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    """The adapter_config.json of a PEFT adapter directory holding safetensors weights.

    Raises:
        ValueError: not a directory, no or unreadable adapter_config.json, no adapter_model.safetensors
            (pickled `.bin` weights are refused: they could run code when loaded).
    """
    if not adapter_dir.is_dir():
        what = "does not exist" if not adapter_dir.exists() else "is a file, expected a directory"
        raise ValueError(f"adapter {str(adapter_dir)!r} {what}")
    text = read_text(adapter_dir / "adapter_config.json", "adapter config")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"adapter config {str(adapter_dir / 'adapter_config.json')!r} is not valid JSON: {error}"
        ) from None
    if not isinstance(document, dict) or "peft_type" not in document:
        raise ValueError(f"adapter {str(adapter_dir)!r}: adapter_config.json is not a PEFT adapter config")
    if not (adapter_dir / ADAPTER_WEIGHTS).is_file():
        raise ValueError(f"adapter {str(adapter_dir)!r} has no {ADAPTER_WEIGHTS} (only safetensors weights are loaded)")
    return document


def check_adapter_fits(model: nn.Module, adapter_dir: Path, adapter_config: dict[str, Any], task: str) -> None:
    """Raise ValueError if the adapter was made for another model or task: a module it adapts is missing
    or has other (d_in, d_out), or a weight it replaces (e.g. the task head) has another shape."""
    from safetensors import safe_open

    from senslora.finetune.methods import TASK_TYPES

    task_type = adapter_config.get("task_type")
    if task_type is not None and task_type != TASK_TYPES.get(task):
        raise ValueError(
            f"adapter {str(adapter_dir)!r} was trained for task type {task_type}, but the data is a {task} task"
        )
    modules = dict(model.named_modules())
    parameters = dict(model.named_parameters())
    try:
        with safe_open(str(adapter_dir / ADAPTER_WEIGHTS), framework="pt") as weights:
            shapes = {key: tuple(weights.get_slice(key).get_shape()) for key in weights.keys()}  # noqa: SIM118
    except Exception as error:  # safetensors raises its own error type for a damaged file
        raise ValueError(f"adapter {str(adapter_dir)!r}: {ADAPTER_WEIGHTS} is unreadable: {error}") from None
    for key, shape in shapes.items():
        name = key.removeprefix("base_model.model.")
        for marker in (".lora_A.", ".lora_B."):
            if marker in name:
                module_name = name.split(marker)[0]
                if module_name not in modules or layer_shape(modules[module_name]) is None:
                    raise ValueError(
                        f"adapter {str(adapter_dir)!r} does not fit this model: it adapts {module_name!r}, which "
                        "the model lacks (was it trained on another model?)"
                    )
                d_in, d_out = layer_shape(modules[module_name])
                side, found, wanted = ("d_in", shape[-1], d_in) if marker == ".lora_A." else ("d_out", shape[0], d_out)
                if found != wanted:
                    raise ValueError(
                        f"adapter {str(adapter_dir)!r} does not fit this model: {module_name!r} has {side} {wanted} "
                        f"here and {found} in the adapter (was it trained on another model?)"
                    )
                break
        else:
            if ".lora_" in name or name not in parameters:
                continue
            if tuple(parameters[name].shape) != shape:
                raise ValueError(
                    f"adapter {str(adapter_dir)!r} does not fit this model: {name!r} has shape "
                    f"{tuple(parameters[name].shape)} here and {shape} in the adapter (another model, or another "
                    "number of labels?)"
                )
