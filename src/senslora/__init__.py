"""senslora: Sensitivity-LoRA, per-module LoRA ranks from the Hessian diagonal, as stock PEFT adapters.

sensitivities = senslora.estimate_sensitivity(model, batches)          # per-module metrics
allocation = senslora.allocate_ranks(sensitivities, avg_rank=4)       # integer ranks, exact budget
config = senslora.to_lora_config(allocation, lora_alpha=8)            # a peft.LoraConfig
model = peft.get_peft_model(model, config)
"""

import senslora._quiet_imports  # noqa: F401  (first: before peft imports bitsandbytes)
from senslora.allocation import Allocation, DominanceWarning, allocate_ranks, fuse_scores, fusion_weight
from senslora.metrics import (
    ModuleSensitivity,
    effective_rank_metric,
    sensitivities_from_json,
    sensitivities_to_json,
    topk_metric,
    trace_metric,
)
from senslora.peft_export import to_lora_config
from senslora.sensitivity import ESTIMATORS, estimate_sensitivity
from senslora.targets import find_target_layers

__version__ = "0.1.0"

__all__ = [
    "ESTIMATORS",
    "Allocation",
    "DominanceWarning",
    "ModuleSensitivity",
    "__version__",
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
