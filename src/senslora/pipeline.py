"""The end-to-end steps behind the command line, each usable on its own from Python.

    data -> model -> calibration batches -> sensitivity.json -> ranks.json -> PEFT model -> training
    -> run_dir/{config.json, sensitivity.json, ranks.json, adapter/, metrics.json, log.jsonl, checkpoints/}

A run directory is finished when `metrics.json` exists; it is never replaced without `overwrite`, and an
unfinished one continues with `resume`.
"""

from __future__ import annotations

import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from senslora.allocation import Allocation, allocate_ranks
from senslora.config import RunConfig
from senslora.data import (
    DataSpec,
    TaskData,
    calibration_subset,
    load_calibration_source,
    load_task_data,
    make_batches,
    make_collator,
    tokenize_dataset,
)
from senslora.evaluation import evaluate_model
from senslora.head_warmup import warm_up_head
from senslora.io import atomic_write_json, atomic_write_text, read_text
from senslora.methods import build_peft_model, count_parameters
from senslora.metrics import ModuleSensitivity, sensitivities_from_json, sensitivities_to_json
from senslora.models import load_model_and_tokenizer
from senslora.sensitivity import estimate_sensitivity
from senslora.training import TrainingResult, total_training_steps, train

FINISHED_MARKER = "metrics.json"


def package_versions() -> dict[str, str]:
    """Versions of the packages a result depends on, and the Python and platform."""
    import peft
    import transformers

    from senslora import __version__

    return {
        "senslora": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA, then MPS, then CPU; anything else must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r} is not a device name (auto, cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} is not available: no CUDA GPU")
    return device


def data_spec(config: RunConfig, source: str | None = None) -> DataSpec:
    """The DataSpec of the training data (or of another source with the same column options)."""
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
        validation_fraction=config.validation_fraction,
        max_train_examples=config.max_train_examples,
        max_validation_examples=config.max_validation_examples,
        seed=config.seed,
    )


@dataclass
class Prepared:
    """Data, model and tokenizer of a run, loaded once."""

    data: TaskData
    model: nn.Module
    tokenizer: Any
    device: torch.device


def prepare(config: RunConfig) -> Prepared:
    """Load the data first (cheap, catches bad input early), then the model for its task."""
    device = resolve_device(config.device)
    data = load_task_data(data_spec(config))
    torch.manual_seed(config.seed)
    model, tokenizer = load_model_and_tokenizer(
        config.model, data.task, num_labels=data.num_labels, trust_remote_code=config.trust_remote_code
    )
    return Prepared(data, model.to(device), tokenizer, device)


def calibration_batches(config: RunConfig, prepared: Prepared) -> list[dict[str, torch.Tensor]]:
    """Tokenized calibration batches: a seeded sample of train, or the separate calibration source."""
    data = prepared.data
    if config.calibration_data:
        calibration_data = load_calibration_source(
            data_spec(config, config.calibration_data), config.calibration_examples, config.seed
        )
        if data.task in ("classification", "regression") and "label" not in calibration_data.column_names:
            raise ValueError(
                f"calibration data {config.calibration_data!r} has no labels; it can calibrate the "
                "activation estimator only of a text task, or use the training data"
            )
    else:
        calibration_data = calibration_subset(data, config.calibration_examples, config.seed)
    tokenized = tokenize_dataset(calibration_data, prepared.tokenizer, data, max_length=config.max_length)
    if len(tokenized) == 0:
        raise ValueError("the calibration data is empty after tokenization")
    collator = make_collator(prepared.tokenizer, data.task)
    return make_batches(tokenized, collator, config.calibration_batch_size)


def run_sensitivity(
    config: RunConfig, prepared: Prepared, batches: list[dict[str, torch.Tensor]]
) -> tuple[dict[str, ModuleSensitivity], dict[str, Any]]:
    """Sensitivity per module and the metadata recorded next to it (estimator, calibration, timing)."""
    warmup: dict[str, Any] = {"steps": 0}
    if config.head_warmup_steps and config.estimator in ("fisher", "hutchinson"):
        warmup = warm_up_head(
            prepared.model,
            batches,
            steps=config.head_warmup_steps,
            learning_rate=config.learning_rate,
            seed=config.seed,
            progress=config.progress,
        )
    start = time.perf_counter()
    sensitivities = estimate_sensitivity(
        prepared.model,
        batches,
        estimator=config.estimator,
        target_modules=config.targets,
        topk_fraction=config.topk_fraction,
        energy_threshold=config.energy_threshold,
        num_probes=config.num_probes,
        per_example=config.per_example,
        seed=config.seed,
        progress=config.progress,
    )
    seconds = time.perf_counter() - start
    metadata = {
        "estimator": config.estimator,
        "settings": {
            "topk_fraction": config.topk_fraction,
            "energy_threshold": config.energy_threshold,
            "num_probes": config.num_probes if config.estimator == "hutchinson" else None,
            "per_example": config.per_example if config.estimator == "fisher" else None,
            "target_modules": config.targets,
        },
        "head_warmup": warmup,
        "calibration": {
            "source": config.calibration_data or f"{config.data} (training sample)",
            "examples": sum(int(b["input_ids"].shape[0]) for b in batches),
            "batches": len(batches),
            "tokens": sum(int(b["attention_mask"].sum()) for b in batches),
            "max_length": config.max_length,
            "seed": config.seed,
        },
        "model": config.model,
        "seconds": seconds,
        "versions": package_versions(),
    }
    return sensitivities, metadata


def run_allocation(config: RunConfig, sensitivities: dict[str, ModuleSensitivity]) -> Allocation:
    return allocate_ranks(
        sensitivities,
        avg_rank=config.avg_rank,
        scheme=config.scheme,
        budget_unit=config.budget_unit,
        min_rank=config.min_rank,
        max_rank=config.max_rank,
        max_rank_factor=config.max_rank_factor,
        weighting=config.weighting,
        metrics=tuple(config.metrics),
        num_groups=config.num_groups,
    )


def load_sensitivity_file(path: str | Path) -> tuple[dict[str, ModuleSensitivity], dict[str, Any]]:
    try:
        return sensitivities_from_json(read_text(path, "sensitivity file"))
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def load_ranks_file(path: str | Path) -> Allocation:
    try:
        return Allocation.from_json(read_text(path, "ranks file"))
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def check_run_dir(run_dir: Path, *, overwrite: bool, resume: bool) -> None:
    """Refuse to replace a finished run without overwrite, or to resume where there is nothing to resume."""
    finished = (run_dir / FINISHED_MARKER).exists()
    if resume:
        if finished:
            raise ValueError(f"{run_dir} holds a finished run; nothing to resume")
        if not (run_dir / "checkpoints" / "last").exists():
            raise ValueError(f"{run_dir} has no checkpoint to resume from")
        return
    if finished and not overwrite:
        raise ValueError(f"{run_dir} already holds a finished run; pass --overwrite to replace it")
    if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise ValueError(f"{run_dir} holds an unfinished run; pass --resume to continue it or --overwrite")


def sidecar(
    allocation: Allocation | None,
    sensitivities: dict[str, ModuleSensitivity] | None,
    sensitivity_metadata: dict[str, Any] | None,
) -> dict[str, Any]:
    """The JSON stored beside the adapter: per-module metrics, weights, theta, ranks and provenance."""
    document: dict[str, Any] = {"format": "senslora.adapter-sidecar/1", "versions": package_versions()}
    if allocation is not None:
        document["allocation"] = allocation.to_dict()
    if sensitivities is not None:
        document["sensitivity"] = {
            **(sensitivity_metadata or {}),
            "modules": [item.to_dict() for item in sensitivities.values()],
        }
    return document


def finetune(config: RunConfig) -> dict[str, Any]:
    """Run the whole job; returns the content of metrics.json."""
    config.validate()
    run_dir = config.run_dir()
    check_run_dir(run_dir, overwrite=config.overwrite, resume=config.resume)
    allocation = load_ranks_file(config.ranks) if config.ranks else None
    prepared = prepare(config)
    if config.overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", config.to_dict())
    data, tokenizer = prepared.data, prepared.tokenizer
    train_set = tokenize_dataset(data.train, tokenizer, data, max_length=config.max_length)
    validation_set = tokenize_dataset(data.validation, tokenizer, data, max_length=config.max_length)
    collator = make_collator(tokenizer, data.task)

    sensitivities, sensitivity_metadata, sensitivity_seconds = None, None, 0.0
    batches = None
    if config.method == "senslora" and allocation is None:
        if config.resume and (run_dir / "ranks.json").exists():
            allocation = load_ranks_file(run_dir / "ranks.json")
        else:
            batches = calibration_batches(config, prepared)
            sensitivities, sensitivity_metadata = run_sensitivity(config, prepared, batches)
            sensitivity_seconds = sensitivity_metadata["seconds"]
            atomic_write_text(run_dir / "sensitivity.json", sensitivities_to_json(sensitivities, sensitivity_metadata))
            allocation = run_allocation(config, sensitivities)
            atomic_write_json(run_dir / "ranks.json", allocation.to_dict())
    if config.method == "eva" and batches is None:
        batches = calibration_batches(config, prepared)
    total_steps = total_training_steps(len(train_set), config.training())
    torch.manual_seed(config.seed)
    model = build_peft_model(
        prepared.model,
        config.method,
        task=data.task,
        avg_rank=config.avg_rank,
        lora_alpha=config.alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.targets,
        allocation=allocation,
        alpha_mode=config.alpha_mode,
        total_steps=total_steps,
        eva_batches=batches,
        progress=config.progress,
    )
    parameters = count_parameters(model)
    print(
        f"{config.method}: {parameters.adapter:,} adapter + {parameters.other_trainable:,} head parameters "
        f"trainable of {parameters.total:,}"
    )
    side = sidecar(allocation, sensitivities, sensitivity_metadata)

    def evaluate(m: nn.Module) -> dict[str, float]:
        return evaluate_model(
            m,
            validation_set,
            collator,
            data,
            batch_size=config.eval_batch_size,
            tokenizer=tokenizer,
            max_generation_examples=config.max_generation_examples,
            max_new_tokens=config.max_new_tokens,
            progress=config.progress,
        )

    result: TrainingResult = train(
        model,
        train_set,
        collator,
        evaluate,
        config.training(),
        run_dir,
        main_metric=data.main_metric,
        greater_is_better=data.greater_is_better,
        adalora=config.method == "adalora",
        resume=config.resume,
        progress=config.progress,
        on_best=lambda _model, directory: atomic_write_json(directory / "senslora.json", side),
    )
    metrics = {
        "method": config.method,
        "model": config.model,
        "data": data.description,
        "task": data.task,
        "main_metric": data.main_metric,
        "best_epoch": result.best_epoch,
        "validation": result.best_metrics,
        "history": result.history,
        "parameters": parameters.to_dict(),
        "allocation_param_count": allocation.param_count if allocation is not None else None,
        "sensitivity_seconds": sensitivity_seconds,
        "train_seconds": result.train_seconds,
        "sensitivity_to_train_ratio": sensitivity_seconds / result.train_seconds if result.train_seconds else None,
        "mean_step_seconds": result.mean_step_seconds,
        "global_step": result.global_step,
        "versions": package_versions(),
    }
    atomic_write_json(run_dir / FINISHED_MARKER, metrics)
    return metrics


def evaluate_adapter(config: RunConfig, adapter_dir: str | Path) -> dict[str, float]:
    """Load the base model and a saved adapter with stock PEFT, and evaluate on the validation split."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").exists():
        raise ValueError(f"{adapter_dir} is not a PEFT adapter directory (no adapter_config.json)")
    config.validate()
    prepared = prepare(config)
    try:
        model = PeftModel.from_pretrained(prepared.model, adapter_dir).to(prepared.device)
    except (OSError, RuntimeError, KeyError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"adapter {str(adapter_dir)!r} does not fit model {config.model!r}: {first}") from None
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
