"""The end-to-end steps behind the command line, each usable on its own from Python.

    data -> model -> calibration batches -> sensitivity.json -> ranks.json -> PEFT model -> training
    -> run_dir/{config.json, sensitivity.json, ranks.json, adapter/, metrics.json, log.jsonl, checkpoints/}

A run directory is finished when `metrics.json` exists; it is never replaced without `overwrite`, and an
unfinished one continues with `resume` (only with the options it was started with). Bad input is caught
before the expensive steps: options, the run directory and a ranks file before any loading; the data
before the model; whether the task suits the model (from its config.json) before loading weights; whether
the ranks (or an adapter) fit the model right after loading it, before tokenization, sensitivity or
training. The run directory is created only after tokenization; a run that fails before writing anything
but its configuration removes it again, so the corrected command starts afresh.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import datasets
import torch
from torch import nn

from senslora.core.allocation import Allocation, allocate_ranks, check_budget_fits, effective_max_rank
from senslora.core.artifacts import RANKS_FILE, SENSITIVITY_FILE, load_ranks_file, load_sensitivity_file
from senslora.core.metrics import ModuleSensitivity, sensitivities_to_json
from senslora.core.sensitivity import estimate_sensitivity
from senslora.core.spectrum_allocation import allocate_spectrum_ranks
from senslora.core.targets import find_target_layers, layer_shape
from senslora.finetune.config import RunConfig, effective_head_warmup_steps, effective_max_rank_factor
from senslora.finetune.data import DataSpec, TaskData, calibration_subset, load_calibration_source, load_task_data
from senslora.finetune.engine import STATE_FOLDER, check_accelerate_launch, check_resumable, checkpoints, train
from senslora.finetune.evaluation import evaluate_model
from senslora.finetune.head_warmup import restore_head, snapshot_head, warm_up_head
from senslora.finetune.methods import (
    build_peft_model,
    check_uniform_rank_fits,
    count_parameters,
    target_shapes,
    uniform_lora_adapter_parameters,
)
from senslora.finetune.models import (
    GENERATIVE_TASKS,
    check_max_length,
    check_model_name,
    encoder_model_type,
    load_model_and_tokenizer,
)
from senslora.finetune.sft import (
    check_trl_available,
    instruction_dataset,
    placeholder_eval_dataset,
    sft_arguments,
    sft_trainer_class,
    uses_sft_trainer,
)
from senslora.finetune.tokenization import make_batches, make_collator, tokenize_dataset, tokenize_texts
from senslora.finetune.training import TrainingResult, total_training_steps
from senslora.utils.distributed import (
    barrier,
    is_distributed,
    is_main_process,
    local_device,
    main_process_first,
    shard_batches,
    world_size,
)
from senslora.utils.io import atomic_write_json, atomic_write_text, check_output_path, read_text, recover_directory

FINISHED_MARKER = "metrics.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# Options that may differ between a run and its resumption (they do not change the result).
RESUMABLE_CHANGES = frozenset({"resume", "overwrite", "progress", "device", "eval_batch_size", "output_dir"})


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
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r} is not a device name (auto, cpu, cuda, cuda:N, mps)") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {name!r} is not allowed; use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} is not available: no CUDA GPU")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} is not available: {torch.cuda.device_count()} CUDA GPU(s)")
    if device.type == "mps" and not _mps_available():
        raise ValueError(f"device {name!r} is not available: no MPS backend")
    return device


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


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


def load_data(config: RunConfig) -> TaskData:
    """The run's training and validation data, after the cheap checks of device and model name."""
    resolve_device(config.device)
    check_model_name(config.model)
    return load_task_data(data_spec(config))


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
        data = load_task_data(data_spec(config))
    check_task_fits_model(config, data)
    torch.manual_seed(config.seed)
    with main_process_first():  # a model converted into the cache is converted once
        model, tokenizer = load_model_and_tokenizer(
            config.model, data.task, num_labels=data.num_labels, trust_remote_code=config.trust_remote_code
        )
    check_max_length(model, config.max_length)
    if config.targets is not None and not (config.method == "senslora" and config.ranks):
        find_target_layers(model, config.targets)  # names the targets the model lacks, before any work
    return Prepared(data, model.to(device), tokenizer, device)


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
    if len(tokenized) == 0:
        raise ValueError("the calibration data is empty after tokenization")
    collator = make_collator(prepared.tokenizer, data.task)
    return make_batches(tokenized, collator, config.calibration_batch_size)


def run_sensitivity(
    config: RunConfig, prepared: Prepared, batches: list[dict[str, torch.Tensor]]
) -> tuple[dict[str, ModuleSensitivity], dict[str, Any]]:
    """Sensitivity per module and the metadata recorded next to it (estimator, calibration, timing)."""
    warmup: dict[str, Any] = {"steps": 0}
    warmup_steps = effective_head_warmup_steps(config.head_warmup_steps, config.estimator, prepared.data.task)
    warmed = warmup_steps > 0
    original_head = snapshot_head(prepared.model) if warmed and config.restore_warmed_head else None
    if warmed:
        warmup = warm_up_head(
            prepared.model,
            batches,
            steps=warmup_steps,
            learning_rate=config.warmup_learning_rate,
            seed=config.seed,
            progress=config.progress,
        )
    if config.gradient_checkpointing and hasattr(prepared.model, "gradient_checkpointing_enable"):
        # fisher / hutchinson then recompute activations in their backward, as training will
        prepared.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    start = time.perf_counter()
    sensitivities = estimate_sensitivity(
        prepared.model,
        list(shard_batches(batches)),  # under torch.distributed: this process's share, sums all-reduced
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
    if warmed:
        warmup["head_kept"] = original_head is None
    if original_head is not None:
        restore_head(prepared.model, original_head)
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
            "processes": world_size(),
        },
        "model": config.model,
        "seconds": seconds,
        "versions": package_versions(),
    }
    return sensitivities, metadata


def run_allocation(
    config: RunConfig, sensitivities: dict[str, ModuleSensitivity], estimator: str | None = None
) -> Allocation:
    """Allocate with the run's options; a `gradient_spectrum` sensitivity (the config's estimator, or
    `estimator` when the sensitivity came from a file) is allocated by `allocate_spectrum_ranks` (scheme,
    weighting and metrics do not apply to it)."""
    if (estimator or config.estimator) == "gradient_spectrum":
        return allocate_spectrum_ranks(
            sensitivities,
            avg_rank=config.avg_rank,
            budget_unit=config.budget_unit,
            min_rank=config.min_rank,
            max_rank=config.max_rank,
            max_rank_factor=effective_max_rank_factor(config.max_rank_factor),
        )
    return allocate_ranks(
        sensitivities,
        avg_rank=config.avg_rank,
        scheme=config.scheme,
        budget_unit=config.budget_unit,
        min_rank=config.min_rank,
        max_rank=config.max_rank,
        max_rank_factor=effective_max_rank_factor(config.max_rank_factor),
        weighting=config.weighting,
        metrics=tuple(config.metrics),
        num_groups=config.num_groups,
    )


def check_allocation_fits(model: nn.Module, allocation: Allocation, source: str | Path) -> None:
    """Raise ValueError if the ranks name a module the model lacks, or one of another shape.

    A ranks file computed for another model fails here: different module names, or the same names with
    different (d_in, d_out).
    """
    modules = dict(model.named_modules())
    missing = sorted(name for name in allocation.ranks if name not in modules)
    if missing:
        raise ValueError(
            f"ranks file {str(source)!r} does not fit this model: it names {len(missing)} module(s) the model "
            f"lacks, e.g. {missing[0]!r} (was it computed for another model?)"
        )
    for name in allocation.ranks:
        shape = layer_shape(modules[name])
        if shape is None:
            raise ValueError(
                f"ranks file {str(source)!r}: module {name!r} is a {type(modules[name]).__name__}, not a Linear "
                "or Conv1D layer"
            )
        expected = tuple(allocation.shapes[name])
        if tuple(shape) != expected:
            raise ValueError(
                f"ranks file {str(source)!r} does not fit this model: module {name!r} is (d_in, d_out) = "
                f"{tuple(shape)} here but {expected} in the file (was it computed for another model?)"
            )
        if allocation.ranks[name] > min(shape):
            raise ValueError(
                f"ranks file {str(source)!r}: module {name!r} gets rank {allocation.ranks[name]}, above its full rank "
                f"{min(shape)} = min(d_in, d_out)"
            )


def check_ranks_fit(config: RunConfig, model: nn.Module, allocation: Allocation | None) -> None:
    """Raise ValueError if the run's ranks cannot fit the model's target layers (right after loading).

    senslora: the budget must fit the targets' full ranks min(d_in, d_out) (and max_rank); a ranks file
    was already checked by `check_allocation_fits`. lora / eva: avg_rank, adalora: init_r, must not exceed
    any target's full rank.
    """
    if config.method == "senslora":
        if allocation is None:
            max_rank = effective_max_rank(
                config.max_rank, effective_max_rank_factor(config.max_rank_factor), config.avg_rank
            )
            check_budget_fits(target_shapes(model, config.targets), config.avg_rank, config.budget_unit, max_rank)
        return
    check_uniform_rank_fits(config.method, config.avg_rank, target_shapes(model, config.targets))


def check_run_dir(run_dir: Path, *, overwrite: bool, resume: bool) -> None:
    """Refuse to replace a finished run without overwrite, or to resume where there is nothing to resume.

    Also refuses a run directory that is a file, lies under a file, or is not writable, and a non-empty
    directory that is not a run directory (overwrite would delete it).
    """
    check_output_path(run_dir, "output directory", directory=True)
    finished = (run_dir / FINISHED_MARKER).exists()
    if run_dir.is_dir():
        recover_directory(run_dir / "adapter")
        for checkpoint in checkpoints(run_dir):
            recover_directory(checkpoint / STATE_FOLDER)
    if resume:
        if finished:
            raise ValueError(f"{run_dir} holds a finished run; nothing to resume (pass --overwrite to replace it)")
        check_resumable(run_dir)
        return
    if finished and not overwrite:
        raise ValueError(f"{run_dir} already holds a finished run; pass --overwrite to replace it")
    occupied = run_dir.is_dir() and any(run_dir.iterdir())
    if occupied and not (run_dir / "config.json").is_file():
        # --overwrite deletes the directory: never one that is not a run directory.
        raise ValueError(
            f"output directory {str(run_dir)!r} is not empty and holds no senslora run (no config.json); "
            "choose another --output-dir"
        )
    if occupied and not overwrite:
        raise ValueError(f"{run_dir} holds an unfinished run; pass --resume to continue it or --overwrite")


def check_resume_config(run_dir: Path, config: RunConfig) -> None:
    """Raise ValueError if a resumed run is given options other than those it was started with."""
    path = run_dir / "config.json"
    if not path.exists():
        return
    try:
        started = json.loads(read_text(path, "run configuration"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(started, dict):
        raise ValueError(f"{path} does not hold a configuration object")
    current = config.to_dict()
    changed = sorted(k for k in current if k not in RESUMABLE_CHANGES and k in started and started[k] != current[k])
    if changed:
        name = changed[0]
        raise ValueError(
            f"--resume needs the options the run was started with: {name} was {started[name]!r}, now "
            f"{current[name]!r} (see {path})"
        )


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


@dataclass
class NewRunDirectory:
    """The run directory a run creates, removed again if the run fails before writing any result.

    Only a directory holding nothing but config.json (and an empty log.jsonl) is removed: one with
    sensitivity.json, ranks.json, a checkpoint, an adapter or log lines is kept for --resume or a look.
    A directory that existed (empty) before the run is kept; only what the run wrote goes.
    """

    path: Path | None = None
    existed: bool = False

    def create(self, path: Path, *, resumed: bool) -> None:
        """Make `path` (and its parents); a resumed run's directory is never removed."""
        existed = path.exists()
        path.mkdir(parents=True, exist_ok=True)
        if not resumed:
            self.path, self.existed = path, existed

    def remove_if_unstarted(self) -> None:
        if self.path is None or not holds_only_configuration(self.path):
            return
        for entry in self.path.iterdir():
            entry.unlink()
        if not self.existed:
            self.path.rmdir()


def holds_only_configuration(run_dir: Path) -> bool:
    """True if `run_dir` holds config.json and at most an empty log.jsonl, nothing else."""
    if not run_dir.is_dir():
        return False
    entries = {entry.name: entry for entry in run_dir.iterdir()}
    if not set(entries) <= {"config.json", "log.jsonl"}:
        return False
    log = entries.get("log.jsonl")
    return all(entry.is_file() for entry in entries.values()) and (log is None or log.stat().st_size == 0)


def finetune(config: RunConfig) -> dict[str, Any]:
    """Run the whole job; returns the content of metrics.json.

    A failure (of any kind, Ctrl-C included) before anything but the configuration was written removes
    the run directory again (`NewRunDirectory`), so that the corrected command needs no --overwrite.

    Raises:
        ValueError: bad input of any kind, found before the expensive step it would spoil.
        TrainingDivergedError: NaN/inf loss or gradients (the last good checkpoint is kept).
    """
    new_run_dir = NewRunDirectory()
    try:
        return _finetune(config, new_run_dir)
    except BaseException:
        new_run_dir.remove_if_unstarted()
        raise


def _finetune(config: RunConfig, new_run_dir: NewRunDirectory) -> dict[str, Any]:
    """The body of `finetune`; records the run directory it creates in `new_run_dir`."""
    config.validate()
    check_accelerate_launch()
    main = is_main_process()
    if not main:
        config = replace(config, progress=False)
    run_dir = config.run_dir()
    with main_process_first():
        check_run_dir(run_dir, overwrite=config.overwrite, resume=config.resume)
    if config.resume:
        check_resume_config(run_dir, config)
    ranks_source: str | Path | None = config.ranks
    allocation = load_ranks_file(config.ranks) if config.ranks else None
    sensitivities, sensitivity_metadata, sensitivity_seconds = None, None, 0.0
    if config.resume and config.method == "senslora" and allocation is None and (run_dir / RANKS_FILE).exists():
        ranks_source = run_dir / RANKS_FILE
        allocation = load_ranks_file(ranks_source)
        if (run_dir / SENSITIVITY_FILE).exists():
            sensitivities, sensitivity_metadata = load_sensitivity_file(run_dir / SENSITIVITY_FILE)
            sensitivity_seconds = float(sensitivity_metadata.get("seconds", 0.0))
    data = load_data(config)
    sft = uses_sft_trainer(data.task, config.method)
    if sft:
        check_trl_available()
    calibrate = config.method == "eva" or (config.method == "senslora" and allocation is None)
    calibration_data = load_calibration_data(config, data) if calibrate else None
    prepared = prepare(config, data)
    if allocation is not None and config.method == "senslora":
        check_allocation_fits(prepared.model, allocation, ranks_source)
    check_ranks_fit(config, prepared.model, allocation)
    data, tokenizer = prepared.data, prepared.tokenizer
    train_set = tokenize_dataset(data.train, tokenizer, data, max_length=config.max_length)
    validation_set = tokenize_dataset(data.validation, tokenizer, data, max_length=config.max_length)
    collator = make_collator(tokenizer, data.task)
    barrier()  # every process has checked the run directory before the main process changes it
    if main:
        if config.overwrite and run_dir.exists():
            shutil.rmtree(run_dir)
        new_run_dir.create(run_dir, resumed=config.resume)
        atomic_write_json(run_dir / "config.json", config.to_dict())
    barrier()

    batches = None
    if config.method == "senslora" and allocation is None:
        batches = calibration_batches(config, prepared, calibration_data)
        sensitivities, sensitivity_metadata = run_sensitivity(config, prepared, batches)
        sensitivity_seconds = sensitivity_metadata["seconds"]
        allocation = run_allocation(config, sensitivities)  # deterministic: the same on every process
        if main:
            atomic_write_text(run_dir / SENSITIVITY_FILE, sensitivities_to_json(sensitivities, sensitivity_metadata))
            atomic_write_json(run_dir / RANKS_FILE, allocation.to_dict())
    if config.method == "eva" and batches is None:
        batches = calibration_batches(config, prepared, calibration_data)
    total_steps = total_training_steps(len(train_set), config.training())
    # the targets' shapes, read before PEFT wraps them (for uniform LoRA's parameter count at this rank)
    shapes = allocation.shapes if config.method == "senslora" else target_shapes(prepared.model, config.targets)
    torch.manual_seed(config.seed)
    setup_start = time.perf_counter()  # for EVA this includes its SVD pass over the calibration batches
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
        eva_batches=list(shard_batches(batches)) if batches is not None else None,  # PEFT gathers the inputs
        progress=config.progress,
    )
    adapter_setup_seconds = time.perf_counter() - setup_start
    parameters = count_parameters(model)
    uniform_parameters = uniform_lora_adapter_parameters(shapes, config.avg_rank)
    if main:
        print(
            f"{config.method}: {parameters.adapter:,} adapter + {parameters.other_trainable:,} head parameters "
            f"trainable of {parameters.total:,}; uniform LoRA at rank {config.avg_rank} on the same "
            f"{len(shapes)} targets: {uniform_parameters:,} adapter parameters"
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

    trainer: dict[str, Any] = {}
    if sft:  # TRL's SFTTrainer on prompt/completion data, the loss on the completion only (senslora.finetune.sft)
        trainer = {
            "trainer_class": sft_trainer_class(),
            "trainer_kwargs": {"processing_class": tokenizer, "eval_dataset": placeholder_eval_dataset()},
            "extra_arguments": sft_arguments(config.max_length),
        }
    result: TrainingResult = train(
        model,
        instruction_dataset(data.train, tokenizer, data) if sft else train_set,
        None if sft else collator,
        evaluate,
        config.training(),
        run_dir,
        main_metric=data.main_metric,
        greater_is_better=data.greater_is_better,
        adalora=config.method == "adalora",
        resume=config.resume,
        progress=config.progress,
        on_best=lambda _model, directory: atomic_write_json(directory / "senslora.json", side),
        **trainer,
    )
    metrics = {
        "method": config.method,
        "model": config.model,
        "data": data.description,
        "task": data.task,
        "main_metric": data.main_metric,
        "best_epoch": result.best_epoch,
        "best_step": result.best_step,
        "validation": result.best_metrics,
        "history": result.history,
        "parameters": parameters.to_dict(),
        "allocation_param_count": allocation.param_count if allocation is not None else None,
        "uniform_lora_adapter_params": uniform_parameters,
        "sensitivity_seconds": sensitivity_seconds,
        "train_seconds": result.train_seconds,
        "sensitivity_to_train_ratio": sensitivity_seconds / result.train_seconds if result.train_seconds else None,
        "adapter_setup_seconds": adapter_setup_seconds,
        "mean_step_seconds": result.mean_step_seconds,
        "global_step": result.global_step,
        "versions": package_versions(),
    }
    if main:
        atomic_write_json(run_dir / FINISHED_MARKER, metrics)
    return metrics


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
