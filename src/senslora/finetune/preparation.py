"""Loading a run's inputs, cheapest and most likely to fail first: data, then the model for its task, then
the calibration examples and their batches.

The data is loaded before the model (a bad file fails in seconds, not after a download), and whether the
task suits the model is read from its config.json before any weights are loaded.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import datasets
import torch
from torch import nn

from senslora.core.targets import find_target_layers
from senslora.finetune.config import RunConfig, effective_calibration_tokens
from senslora.finetune.data import (
    DataSpec,
    TaskData,
    calibration_block_sample,
    calibration_subset,
    dropped_rows_line,
    load_calibration_source,
    load_task_data,
)
from senslora.finetune.environment import resolve_device
from senslora.finetune.memory_plan import (
    MemoryPlan,
    check_plan_fits,
    empty_model,
    free_device_memory,
    plan_memory,
)
from senslora.finetune.methods import get_method
from senslora.finetune.model_loading import (
    LoadSettings,
    check_bitsandbytes,
    parse_max_memory,
    resolve_dtype,
)
from senslora.finetune.models import (
    GENERATIVE_TASKS,
    check_max_length,
    check_model_name,
    encoder_model_type,
    load_model_and_tokenizer,
    read_model_config,
)
from senslora.finetune.tokenization import make_batches, make_collator, tokenize_dataset, tokenize_texts
from senslora.utils.distributed import (
    is_distributed,
    is_main_process,
    local_device,
    main_process_first,
)


def data_spec(config: RunConfig, source: str | None = None) -> DataSpec:
    """The DataSpec of the training data (or of another source with the same column options, no test data)."""
    return DataSpec(
        source=source or config.data,
        task=config.task,
        text_column=config.text_column,
        text_pair_column=config.text_pair_column,
        label_column=config.label_column,
        prompt_column=config.prompt_column,
        response_column=config.response_column,
        config_name=config.dataset_config,
        validation_split=config.validation_data,
        test_split=None if source else config.test_data,  # the test data belongs to the training data
        validation_fraction=config.validation_fraction,
        max_train_examples=config.max_train_examples,
        max_validation_examples=config.max_validation_examples,
        test_examples=config.test_examples,
        seed=config.seed,
    )


@dataclass
class Prepared:
    """Data, model and tokenizer of a run, loaded once."""

    data: TaskData
    model: nn.Module
    tokenizer: Any
    device: torch.device
    loading: dict[str, Any] | None = None  # LoadSettings.describe(): dtype, quantization, placement


def load_data(config: RunConfig) -> TaskData:
    """The run's training and validation data, after the cheap checks of device, dtype, quantization
    and model name; then the check that --calibration-tokens suits its task (before any model is loaded)."""
    load_settings(config, resolve_device(config.device))
    data = load_reported(data_spec(config))
    effective_calibration_tokens(config.calibration_tokens, config.estimator, data.task)
    return data


# Heads a sequence task adds on top of a base model: new weights, trained in full, kept unquantized.
SEQUENCE_HEADS = ("classifier", "score", "pre_classifier", "lm_head")


def load_settings(config: RunConfig, device: torch.device, task: str | None = None) -> LoadSettings:
    """How to load the run's model on `device`, from the options and config.json alone (no weights).

    Raises:
        ValueError: float16 on the CPU, quantization without bitsandbytes, a missing model path.
    """
    check_model_name(config.model)
    model_config = read_model_config(config.model, trust_remote_code=config.trust_remote_code)
    dtype = resolve_dtype(config.model_dtype, device, model_config)
    check_bitsandbytes(config.quantization)
    device_map: str | dict[str, Any] | None = None
    if config.device_map != "none":
        device_map = config.device_map
    elif config.quantization != "none":
        device_map = {"": str(device)}  # bitsandbytes quantizes while loading, onto the one device
    return LoadSettings(
        dtype=dtype,
        quantization=config.quantization,
        device_map=device_map,
        max_memory=parse_max_memory(config.max_memory) if config.max_memory else None,
        offload_folder=config.offload_folder,
        keep_unquantized=SEQUENCE_HEADS if task in ("classification", "regression") else None,
    )


def load_reported(spec: DataSpec) -> TaskData:
    """`load_task_data`, saying (one line per split, main process only) how many rows were dropped and why."""
    data = load_task_data(spec)
    if is_main_process():
        described = data.description
        for split, by_column in described["rows_dropped_by_column"].items():
            if by_column:
                print(dropped_rows_line(split, sum(by_column.values()), described["rows_read"][split], by_column))
    return data


def prepare(config: RunConfig, data: TaskData | None = None) -> Prepared:
    """Load the data first (cheap, catches bad input early), then the model for its task.

    Args:
        data: the run's data if already loaded (by `load_data`).
    Raises:
        ValueError: an unavailable device, a missing model path, bad data, a generative task for an
            encoder, a model that cannot be loaded, a max_length beyond the positions the model can
            read, or target modules the model lacks.
    """
    device = resolve_device(config.device)
    if is_distributed() and device.type == "cuda" and device.index is None:
        device = local_device()  # one GPU per process: cuda:LOCAL_RANK
    check_model_name(config.model)
    if data is None:
        data = load_reported(data_spec(config))
    check_task_fits_model(config, data)
    settings = load_settings(config, device, data.task)
    torch.manual_seed(config.seed)
    with main_process_first():  # a model converted into the cache is converted once
        model, tokenizer = load_model_and_tokenizer(
            config.model,
            data.task,
            num_labels=data.num_labels,
            settings=settings,
            trust_remote_code=config.trust_remote_code,
        )
    check_max_length(model, config.max_length)
    if config.targets is not None and not (get_method(config.method).uses_allocation and config.ranks):
        find_target_layers(model, config.targets)  # names the targets the model lacks, before any work
    if not settings.placed:
        model = model.to(device)
    loading = settings.describe()
    if config.device_map != "none":  # where Accelerate put the modules: {"cpu": 12, "disk": 20, ...}
        device_map = getattr(model, "hf_device_map", None) or {"": next(model.parameters()).device}
        loading["placement"] = dict(Counter(str(where) for where in device_map.values()))
    return Prepared(data, model, tokenizer, device, loading)


def memory_plan(config: RunConfig, data: TaskData, *, training: bool) -> MemoryPlan | None:
    """The run's memory plan from config.json alone (None if the config cannot be read before loading),
    refused when the device's free memory is known to be too small and nothing is offloaded.

    Raises:
        ValueError: the weights (and, `training`, the adapter's training state) exceed the free memory
            of a CUDA device, without --device-map.
    """
    device = resolve_device(config.device)
    if is_distributed() and device.type == "cuda" and device.index is None:
        device = local_device()
    model_config = read_model_config(config.model, trust_remote_code=config.trust_remote_code)
    if model_config is None:
        return None
    settings = load_settings(config, device, data.task)
    try:
        empty = empty_model(model_config, data.task, data.num_labels)
        plan = plan_memory(empty, settings, config.avg_rank, config.targets)
    except Exception:  # an architecture transformers cannot build from its config: the loader says why
        return None
    if config.device_map == "none":
        check_plan_fits(plan, device, free_device_memory(device), training=training)
    return plan


def check_task_fits_model(config: RunConfig, data: TaskData) -> None:
    """Refuse a causal_lm or instruction task for an encoder, reading only the model's config.json.

    Text without a label column is inferred to be causal_lm; on an encoder (MiniLM, BERT, ...) that is
    almost always a label column under another name, so the message asks for it and lists the columns.

    Raises:
        ValueError: the task needs a causal language-model head the model cannot have.
    """
    if data.task not in GENERATIVE_TASKS:
        return
    encoder = encoder_model_type(config.model, trust_remote_code=config.trust_remote_code)
    if encoder is None:
        return
    if data.task == "causal_lm" and data.description.get("task_origin") == "columns":
        columns = ", ".join(data.description.get("available_columns", []))
        raise ValueError(
            f"no label column: pass --label-column (available columns: {columns}); without labels the task "
            f"would be causal_lm, which model {config.model!r} cannot learn (an encoder, {encoder})"
        )
    raise ValueError(
        f"task {data.task} needs a decoder with a causal language-model head; model {config.model!r} is an "
        f"encoder ({encoder}): choose a decoder (e.g. smollm2) or a classification/regression task"
    )


def load_calibration_data(config: RunConfig, data: TaskData) -> datasets.Dataset:
    """The calibration examples: a seeded sample of train, or of the separate calibration source.

    Raises:
        ValueError: the calibration source cannot be loaded, or lacks the labels the task needs.
    """
    if not config.calibration_data:
        return calibration_subset(data, config.calibration_examples, config.seed)
    try:
        calibration_data = load_calibration_source(
            data_spec(config, config.calibration_data), config.calibration_examples, config.seed
        )
    except ValueError as error:
        raise ValueError(f"calibration data {config.calibration_data!r}: {error}") from None
    labelled_task = data.task in ("classification", "regression")
    if labelled_task and "label" not in calibration_data.column_names and config.estimator not in ("activation", "obd"):
        raise ValueError(
            f"calibration data {config.calibration_data!r} has no labels, which the {config.estimator} "
            "estimator needs; use the activation estimator or labelled calibration data"
        )
    return calibration_data


def calibration_batches(
    config: RunConfig, prepared: Prepared, calibration_data: datasets.Dataset | None = None
) -> list[dict[str, torch.Tensor]]:
    """Tokenized calibration batches: a seeded sample of train, or the separate calibration source.

    Args:
        calibration_data: the examples if already loaded (by `load_calibration_data`).
    """
    data = prepared.data
    if calibration_data is None:
        calibration_data = load_calibration_data(config, data)
    if data.task in ("classification", "regression") and "label" not in calibration_data.column_names:
        # Label-free text (e.g. Wikipedia) for the activation estimator: inputs only.
        tokenized = tokenize_texts(calibration_data, prepared.tokenizer, max_length=config.max_length)
    else:
        tokenized = tokenize_dataset(calibration_data, prepared.tokenizer, data, max_length=config.max_length)
    if data.task == "causal_lm" and config.calibration_unit == "blocks":
        tokenized = calibration_block_sample(tokenized, config.calibration_examples, config.seed)
    if len(tokenized) == 0:
        raise ValueError("the calibration data is empty after tokenization")
    collator = make_collator(prepared.tokenizer, data.task)
    return make_batches(tokenized, collator, config.calibration_batch_size)
