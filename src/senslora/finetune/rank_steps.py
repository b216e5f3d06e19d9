"""The run's ranks: the sensitivity pass (after the head warm-up of the loss-based estimators), the
allocation with the run's options, and the checks that ranks fit the loaded model.

A ranks file (or a budget) that cannot fit is refused right after the model is loaded, before
tokenization, sensitivity or training: every module it names must exist with the same (d_in, d_out), and
no rank may exceed the module's full rank min(d_in, d_out).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from senslora.core.allocation import allocate_ranks
from senslora.core.allocation_result import Allocation
from senslora.core.budget import check_budget_fits, effective_max_rank
from senslora.core.calibration import completion_mask
from senslora.core.metrics import ModuleSensitivity
from senslora.core.sensitivity import estimate_sensitivity
from senslora.core.spectrum_allocation import allocate_spectrum_ranks
from senslora.core.targets import layer_shape
from senslora.finetune.config import (
    AllocationOptions,
    RunConfig,
    effective_calibration_tokens,
    effective_head_warmup_steps,
    effective_max_rank_factor,
)
from senslora.finetune.environment import package_versions
from senslora.finetune.methods import check_uniform_rank_fits, get_method, target_shapes
from senslora.finetune.options import default_of
from senslora.finetune.preparation import Prepared
from senslora.finetune.training.head_warmup import restore_head, snapshot_head, warm_up_head
from senslora.utils.distributed import (
    shard_batches,
    world_size,
)


def run_sensitivity(
    config: RunConfig, prepared: Prepared, batches: list[dict[str, torch.Tensor]]
) -> tuple[dict[str, ModuleSensitivity], dict[str, Any]]:
    """Sensitivity per module and the metadata recorded next to it (estimator, calibration, timing)."""
    tokens = effective_calibration_tokens(config.calibration_tokens, config.estimator, prepared.data.task)
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
        calibration_tokens=tokens,
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
            "calibration_tokens": tokens,
            "counted_tokens": sum(
                int((completion_mask(b) if tokens == "completion" else b["attention_mask"] != 0).sum()) for b in batches
            ),
            "max_length": config.max_length,
            "seed": config.seed,
            "processes": world_size(),
        },
        "model": config.model,
        "model_loading": prepared.loading,
        "seconds": seconds,
        "versions": package_versions(),
    }
    return sensitivities, metadata


SCORE_FUSION_OPTIONS = ("scheme", "weighting", "metrics", "num_groups")  # unused by the spectrum allocator


def run_allocation(
    config: RunConfig, sensitivities: dict[str, ModuleSensitivity], estimator: str | None = None
) -> Allocation:
    """Allocate with the run's options; a `gradient_spectrum` sensitivity (the config's estimator, or
    `estimator` when the sensitivity came from a file) is allocated by `allocate_spectrum_ranks` (scheme,
    weighting and metrics do not apply to it: a warning names any set away from its default)."""
    if (estimator or config.estimator) == "gradient_spectrum":
        defaults = {item.name: default_of(item) for item in fields(AllocationOptions)}
        ignored = [
            f"{name}={getattr(config, name)}"
            for name in SCORE_FUSION_OPTIONS
            if getattr(config, name) != defaults[name]
        ]
        if ignored:
            warnings.warn(
                f"{', '.join(ignored)} ignored: the gradient_spectrum allocator spends ranks on singular values, "
                "without fusing metrics or grouping modules",
                stacklevel=2,
            )
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
    if get_method(config.method).uses_allocation:
        if allocation is None:
            max_rank = effective_max_rank(
                config.max_rank, effective_max_rank_factor(config.max_rank_factor), config.avg_rank
            )
            check_budget_fits(target_shapes(model, config.targets), config.avg_rank, config.budget_unit, max_rank)
        return
    check_uniform_rank_fits(config.method, config.avg_rank, target_shapes(model, config.targets))
