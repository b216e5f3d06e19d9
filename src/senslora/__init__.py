"""senslora: Sensitivity-LoRA, per-module LoRA ranks from the Hessian diagonal, as stock PEFT adapters.

sensitivities = senslora.estimate_sensitivity(model, batches)          # per-module metrics
allocation = senslora.allocate_ranks(sensitivities, avg_rank=4)       # integer ranks, exact budget
config = senslora.to_lora_config(allocation, lora_alpha=8)            # a peft.LoraConfig
model = peft.get_peft_model(model, config)

or, keeping your own LoraConfig (target_modules="all-linear", use_rslora, use_dora, ...):

config = senslora.allocate_lora_config(model, peft.LoraConfig(r=8, target_modules="all-linear"), batches)

The package is four layers over a utility folder; each imports only from the ones below it
(tests/test_architecture.py keeps it so, and keeps the module imports free of cycles):

    cli/        the `senslora` command: parses options, calls finetune and reporting
    finetune/   data, models, training, evaluation, the end-to-end run       | side by side: neither
    reporting/  report of one allocation, comparison of two (no model)       | imports the other
    core/       the method: targets, estimators, metrics, allocation, PEFT export
    utils/      atomic io, distributed helpers

This module re-exports the core's public names; importing it needs neither the CLI nor the benchmark extras.
"""

import senslora.utils._quiet_imports  # noqa: F401  (first: before peft imports bitsandbytes)
from senslora.core.allocation import DominanceWarning, allocate_ranks
from senslora.core.allocation_result import Allocation
from senslora.core.config_allocation import allocate_lora_config
from senslora.core.fusion import fuse_scores, fusion_weight
from senslora.core.metrics import (
    ModuleSensitivity,
    effective_rank_metric,
    sensitivities_from_json,
    sensitivities_to_json,
    topk_metric,
    trace_metric,
)
from senslora.core.peft_export import to_lora_config
from senslora.core.sensitivity import ESTIMATORS, estimate_sensitivity
from senslora.core.targets import find_target_layers

__version__ = "0.1.0"

__all__ = [
    "ESTIMATORS",
    "Allocation",
    "DominanceWarning",
    "ModuleSensitivity",
    "__version__",
    "allocate_lora_config",
    "allocate_ranks",
    "effective_rank_metric",
    "estimate_sensitivity",
    "find_target_layers",
    "fuse_scores",
    "fusion_weight",
    "sensitivities_from_json",
    "sensitivities_to_json",
    "to_lora_config",
    "topk_metric",
    "trace_metric",
]
