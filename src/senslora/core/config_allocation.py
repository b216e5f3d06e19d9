"""`allocate_lora_config`: the user's own `peft.LoraConfig`, returned with senslora's ranks filled in.

The PEFT-idiomatic entry point (EVA's flow: calibration data -> ranks -> the same LoraConfig): the targets
are the modules PEFT itself would adapt with that config (target_modules, "all-linear" resolved as PEFT
does: every Linear/Conv1D but the output layer; exclude_modules; layers_to_transform / layers_pattern;
modules_to_save), their sensitivities are measured and the ranks allocated, and a copy of the config comes
back with

    rank_pattern[m]  = r_m                                       every target with r_m > 0
    alpha_pattern[m] = lora_alpha * r_m / r                       alpha_mode "scale" (LoRA)
                     = lora_alpha * sqrt(r_m / r)                 alpha_mode "scale" with use_rslora
    exclude_modules  += every target with r_m = 0

where r and lora_alpha are the user's: in "scale" mode every module keeps the scale the user's config gives
(lora_alpha / r, or lora_alpha / sqrt(r)); "fixed" leaves alpha_pattern empty (alpha kept, PEFT's plain
rank_pattern behaviour). Every other field (use_rslora, use_dora, init_lora_weights, task_type, dropout,
target_modules itself, ...) is kept as given.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from torch import nn

from senslora.core.allocation import allocate_ranks
from senslora.core.allocation_result import Allocation
from senslora.core.calibration import Batch
from senslora.core.peft_export import ALPHA_MODES, _pattern_key
from senslora.core.sensitivity import estimate_sensitivity
from senslora.core.spectrum_allocation import allocate_spectrum_ranks
from senslora.core.targets import layer_shape

FORWARD_ONLY_ESTIMATORS = ("activation", "obd")


def peft_target_names(model: nn.Module, lora_config: Any) -> list[str]:
    """The full names of the modules `peft.get_peft_model(model, lora_config)` would adapt, in model order.

    Raises:
        ValueError: the config's targets match no module, or match a layer that is not Linear/Conv1D.
    """
    from peft.tuners.tuners_utils import _maybe_include_all_linear_layers, check_target_module_exists
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    resolved = copy.deepcopy(lora_config)
    if resolved.target_modules is None:  # PEFT's default targets for the model type
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        default = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
        if default is None:
            raise ValueError(f"the LoraConfig sets no target_modules and PEFT has no default for {model_type!r}")
        resolved.target_modules = default if isinstance(default, str) else set(default)
    resolved = _maybe_include_all_linear_layers(resolved, model)
    names = []
    for name, module in model.named_modules():
        if not name or not check_target_module_exists(resolved, name):
            continue
        if layer_shape(module) is None:
            raise ValueError(
                f"the LoraConfig targets {name!r}, a {type(module).__name__}: senslora allocates ranks to "
                "Linear and Conv1D layers only (leave it out of target_modules)"
            )
        names.append(name)
    if not names:
        raise ValueError(
            f"the LoraConfig's targets match no module of the model (target_modules={lora_config.target_modules!r}, "
            f"exclude_modules={lora_config.exclude_modules!r}, layers_to_transform={lora_config.layers_to_transform!r})"
        )
    return names


class _ModelRunner(nn.Module):
    """The user's model behind a forward that calls `run_model(model)`, so the estimators' hooks see it run."""

    def __init__(self, model: nn.Module, run_model: Callable[[nn.Module], Any]) -> None:
        super().__init__()
        self.model = model
        self._run_model = run_model

    def forward(self, **_: Any) -> Any:
        return self._run_model(self.model)


def _excluded(user: str | Iterable[str] | None, names: list[str]) -> str | set[str] | None:
    """The user's exclude_modules with `names` added: a regex stays a regex (names as escaped alternatives)."""
    if not names:
        return user
    if isinstance(user, str):
        return "|".join([f"(?:{user})", *(re.escape(name) for name in names)])
    return {*(user or ()), *names}  # a set, as LoraConfig stores a list


def allocate_lora_config(
    model: nn.Module,
    lora_config: Any,
    batches: Iterable[Batch] | None = None,
    *,
    run_model: Callable[[nn.Module], Any] | None = None,
    avg_rank: float | None = None,
    estimator: str = "activation",
    alpha_mode: str = "scale",
    calibration_tokens: str = "all",
    progress: bool = False,
    seed: int = 0,
    **allocation_options: Any,
) -> Any:
    """A copy of `lora_config` with rank_pattern / alpha_pattern (and exclude_modules) from senslora's ranks.

    Args:
        model: the base model, as it will be given to `peft.get_peft_model`.
        lora_config: the user's `peft.LoraConfig`; its targets, r and lora_alpha say what to adapt, and the
            budget and scale (see the module docstring). It is not changed.
        batches: calibration batches, dicts of model inputs (labels for the loss-based estimators).
        run_model: instead of batches, `run_model(model)` runs the model over the calibration data itself
            (any input format); forward-only estimators (activation, obd) only; every input row counts.
        avg_rank: the average rank the budget spends (default: the config's r, uniform LoRA's budget).
        estimator: one of `senslora.ESTIMATORS`.
        alpha_mode: "scale" (every module keeps the config's scale) or "fixed" (alpha kept).
        calibration_tokens: "all" non-padding tokens, or "completion": only the positions a completion-only
            loss scores (labels[t + 1] != -100), for instruction batches (activation, obd).
        **allocation_options: passed to `allocate_ranks` (scheme, budget_unit, min_rank, max_rank,
            max_rank_factor, weighting, metrics, num_groups) or, for gradient_spectrum, to
            `allocate_spectrum_ranks`.

    Raises:
        ValueError: not a LoRA config, a config that already has rank_pattern or alpha_pattern, both or
            neither of batches and run_model, run_model with a loss-based estimator, targets matching no
            module, bad allocation options, or every rank 0.
    """
    peft_type = getattr(lora_config, "peft_type", None)
    if getattr(peft_type, "value", peft_type) != "LORA":
        raise ValueError(f"lora_config must be a peft.LoraConfig, got {type(lora_config).__name__}")
    if lora_config.rank_pattern or lora_config.alpha_pattern:
        raise ValueError("lora_config already has a rank_pattern or alpha_pattern; give one without them")
    if alpha_mode not in ALPHA_MODES:
        raise ValueError(f"unknown alpha_mode {alpha_mode!r}; allowed: {', '.join(ALPHA_MODES)}")
    if (batches is None) == (run_model is None):
        raise ValueError("give either batches (dicts of model inputs) or run_model (a callable), not both or neither")
    if run_model is not None and estimator not in FORWARD_ONLY_ESTIMATORS:
        raise ValueError(
            f"run_model works with the forward-only estimators ({', '.join(FORWARD_ONLY_ESTIMATORS)}); the "
            f"{estimator} estimator needs batches with labels"
        )
    names = peft_target_names(model, lora_config)
    # 1. Sensitivity of exactly the modules PEFT will adapt.
    options = {"estimator": estimator, "progress": progress, "seed": seed, "calibration_tokens": calibration_tokens}
    if run_model is not None:
        runner = _ModelRunner(model, run_model)
        measured = estimate_sensitivity(runner, [{}], target_modules=[f"model.{n}" for n in names], **options)
        sensitivities = {
            name.removeprefix("model."): replace(item, name=name.removeprefix("model."))
            for name, item in measured.items()
        }
    else:
        sensitivities = estimate_sensitivity(model, batches, target_modules=names, **options)
    # 2. Ranks under uniform LoRA's budget at avg_rank (the config's r unless given).
    average = float(avg_rank if avg_rank is not None else lora_config.r)
    allocate = allocate_spectrum_ranks if estimator == "gradient_spectrum" else allocate_ranks
    allocation: Allocation = allocate(sensitivities, avg_rank=average, **allocation_options)
    return filled_lora_config(lora_config, allocation.ranks, alpha_mode=alpha_mode)


def filled_lora_config(lora_config: Any, ranks: Mapping[str, int], *, alpha_mode: str = "scale") -> Any:
    """A copy of `lora_config` giving each module its rank (see the module docstring for the alphas).

    Raises:
        ValueError: every rank is 0.
    """
    kept = {name: int(rank) for name, rank in ranks.items() if rank > 0}
    if not kept:
        raise ValueError("every module has rank 0: there is nothing to adapt")
    names = sorted(kept)
    keys = {name: _pattern_key(name, names) for name in names}
    result = copy.deepcopy(lora_config)
    result.rank_pattern = {keys[n]: kept[n] for n in names}
    if alpha_mode == "scale":
        ratio = (lambda r: math.sqrt(r / lora_config.r)) if lora_config.use_rslora else (lambda r: r / lora_config.r)
        result.alpha_pattern = {keys[n]: lora_config.lora_alpha * ratio(kept[n]) for n in names}
    result.exclude_modules = _excluded(lora_config.exclude_modules, sorted(n for n, r in ranks.items() if r <= 0))
    return result
