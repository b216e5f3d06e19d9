"""Evaluating a saved adapter: stock PEFT loads it onto the base model, after checks that it fits.

Only safetensors weights are loaded (pickled `.bin` weights could run code); an adapter made for another
model, task or number of labels is refused with the module or weight that differs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from senslora.core.targets import layer_shape
from senslora.finetune.config import RunConfig
from senslora.finetune.evaluation import evaluate_model
from senslora.finetune.preparation import Prepared, prepare
from senslora.finetune.tokenization import make_collator, tokenize_dataset
from senslora.utils.io import read_text

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def evaluate_adapter(config: RunConfig, adapter_dir: str | Path) -> dict[str, float]:
    """Load the base model and a saved adapter with stock PEFT, and evaluate on the validation split."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    config.validate()
    adapter_config = read_adapter_config(adapter_dir)
    prepared = prepare(config)
    check_adapter_fits(prepared.model, adapter_dir, adapter_config, prepared.data.task)
    try:
        model = PeftModel.from_pretrained(prepared.model, adapter_dir).to(prepared.device)
    except (OSError, RuntimeError, KeyError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"adapter {str(adapter_dir)!r} does not fit model {config.model!r}: {first}") from None
    return evaluate_on_validation(config, prepared, model)


def evaluate_on_validation(config: RunConfig, prepared: Prepared, model: nn.Module) -> dict[str, float]:
    """The task's metrics of `model` (an adapted or the bare base model) on the run's validation split."""
    data = prepared.data
    validation_set = tokenize_dataset(data.validation, prepared.tokenizer, data, max_length=config.max_length)
    return evaluate_model(
        model,
        validation_set,
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
