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

import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from peft import prepare_model_for_kbit_training
from torch import nn

from senslora.core.artifacts import RANKS_FILE, SENSITIVITY_FILE, load_ranks_file, load_sensitivity_file
from senslora.core.metrics import sensitivities_to_json
from senslora.finetune.config import RunConfig
from senslora.finetune.data import held_out_overlap_lines
from senslora.finetune.environment import package_versions
from senslora.finetune.evaluation.evaluate import evaluate_model
from senslora.finetune.evaluation.saved_adapter import evaluate_adapter
from senslora.finetune.methods import (
    build_peft_model,
    count_parameters,
    get_method,
    target_shapes,
    uniform_lora_adapter_parameters,
)
from senslora.finetune.model_loading import is_quantized
from senslora.finetune.preparation import (
    calibration_batches,
    load_calibration_data,
    load_data,
    memory_plan,
    prepare,
)
from senslora.finetune.rank_steps import check_allocation_fits, check_ranks_fit, run_allocation, run_sensitivity
from senslora.finetune.run_files.run_directory import (
    FINISHED_MARKER,
    NewRunDirectory,
    check_resume_config,
    check_run_dir,
    sidecar,
)
from senslora.finetune.tokenization import make_collator, tokenize_dataset
from senslora.finetune.training.engine import check_accelerate_launch, train
from senslora.finetune.training.settings import TrainingResult, total_training_steps
from senslora.finetune.training.sft import (
    check_trl_available,
    instruction_dataset,
    placeholder_eval_dataset,
    sft_arguments,
    sft_trainer_class,
    uses_sft_trainer,
)
from senslora.utils.distributed import (
    barrier,
    is_main_process,
    main_process_first,
    shard_batches,
)
from senslora.utils.io import atomic_write_json, atomic_write_text


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
    """The body of `finetune`; records the run directory it creates in `new_run_dir`.

    Long on purpose: it is the run, step by step, in the order that catches bad input before the work it
    would spoil; each step is one call into the module that owns it.
    """
    # 1. Options, launcher and run directory: nothing is loaded yet.
    config.validate()
    if config.device_map != "none":
        raise ValueError(
            "--device-map applies to `senslora sensitivity` only: training needs the whole model on one device "
            "(compute the ranks there, then pass --ranks; --quantization nf4 shrinks the model for training)"
        )
    check_accelerate_launch()
    main = is_main_process()
    if not main:
        config = replace(config, progress=False)
    run_dir = config.run_dir()
    with main_process_first():
        check_run_dir(run_dir, overwrite=config.overwrite, resume=config.resume)
    if config.resume:
        check_resume_config(run_dir, config)
    # 2. Ranks given (--ranks), or kept by the run being resumed: no sensitivity pass then.
    method = get_method(config.method)
    ranks_source: str | Path | None = config.ranks
    allocation = load_ranks_file(config.ranks) if config.ranks else None
    sensitivities, sensitivity_metadata, sensitivity_seconds = None, None, 0.0
    if config.resume and method.uses_allocation and allocation is None and (run_dir / RANKS_FILE).exists():
        ranks_source = run_dir / RANKS_FILE
        allocation = load_ranks_file(ranks_source)
        if (run_dir / SENSITIVITY_FILE).exists():
            sensitivities, sensitivity_metadata = load_sensitivity_file(run_dir / SENSITIVITY_FILE)
            sensitivity_seconds = float(sensitivity_metadata.get("seconds", 0.0))
    # 3. Data before the model (a bad file fails in seconds), then the model, then whether the ranks fit it.
    data = load_data(config)
    sft = uses_sft_trainer(data.task, config.method)
    if sft:
        check_trl_available()
    calibrate = method.needs_calibration(has_ranks=allocation is not None)
    calibration_data = load_calibration_data(config, data) if calibrate else None
    plan = memory_plan(config, data, training=True)  # from config.json alone, before any weights
    if plan is not None and main:
        print(plan.text(training=True))
    prepared = prepare(config, data)
    if allocation is not None and method.uses_allocation:
        check_allocation_fits(prepared.model, allocation, ranks_source)
    check_ranks_fit(config, prepared.model, allocation)
    # 4. Tokenize; only now, with every input checked, does the run directory get written.
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

    # 5. Sensitivity and allocation (senslora without given ranks), written before training starts.
    batches = None
    if method.uses_allocation and allocation is None:
        batches = calibration_batches(config, prepared, calibration_data)
        sensitivities, sensitivity_metadata = run_sensitivity(config, prepared, batches)
        sensitivity_seconds = sensitivity_metadata["seconds"]
        allocation = run_allocation(config, sensitivities)  # deterministic: the same on every process
        if main:
            atomic_write_text(run_dir / SENSITIVITY_FILE, sensitivities_to_json(sensitivities, sensitivity_metadata))
            atomic_write_json(run_dir / RANKS_FILE, allocation.to_dict())
    # 6. The PEFT model of the method (EVA's SVD initialisation runs on the calibration batches here).
    if calibrate and batches is None:  # EVA's SVD inputs
        batches = calibration_batches(config, prepared, calibration_data)
    total_steps = total_training_steps(len(train_set), config.training())
    # the targets' shapes, read before PEFT wraps them (for uniform LoRA's parameter count at this rank)
    shapes = allocation.shapes if method.uses_allocation else target_shapes(prepared.model, config.targets)
    if is_quantized(prepared.model):  # QLoRA: norms and head in float32, inputs that carry gradients
        prepared.model = prepare_model_for_kbit_training(
            prepared.model, use_gradient_checkpointing=config.gradient_checkpointing
        )
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
    side = sidecar(allocation, sensitivities, sensitivity_metadata, model_loading=prepared.loading)

    # 7. Train on the Trainer (SFTTrainer for instruction data), evaluating and keeping the best adapter.
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
    if (
        sft
    ):  # TRL's SFTTrainer on prompt/completion data, the loss on the completion only (senslora.finetune.training.sft)
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
        method=method,
        resume=config.resume,
        progress=config.progress,
        on_best=lambda _model, directory: atomic_write_json(directory / "senslora.json", side),
        **trainer,
    )
    # 8. The kept adapter, as stock PEFT loads it onto a fresh base model, scored on the held-out test split.
    test_metrics = None
    if data.test is not None:
        barrier()  # the main process has written the kept adapter
        del model, prepared  # the trained model and its base: a fresh base is loaded for the kept adapter
        test_metrics = evaluate_adapter(config, run_dir / "adapter", "test", prepared=prepare(config, data))
        if main:
            shown = ", ".join(f"{name} {value:.4g}" for name, value in test_metrics.items())
            print(f"test ({len(data.test)} held-out examples): {shown}")
    if main:
        for line in held_out_overlap_lines(data.description):
            print(line)
    # 9. metrics.json last: its presence marks the run finished.
    metrics = {
        "method": config.method,
        "model": config.model,
        "data": data.description,
        "task": data.task,
        "main_metric": data.main_metric,
        "best_epoch": result.best_epoch,
        "best_step": result.best_step,
        "validation": result.best_metrics,
        "test": test_metrics,
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
