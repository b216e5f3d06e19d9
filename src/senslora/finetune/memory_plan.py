"""A memory plan before loading: what the weights, the adapter and its optimizer will take, from the model's
config alone.

The model is built on the meta device (`accelerate.init_empty_weights`: shapes, no storage, no weights
read), which gives the exact parameter count and the target layers' shapes. Then

    weights   = sum over parameters of numel x bytes(dtype)        (quantized Linear weights at
                                                                   QUANTIZED_BYTES: NF4 ~4.13 bits, int8 ~8)
    adapter   = avg_rank x sum over targets of (d_in + d_out)      (uniform LoRA's count: the senslora
                                                                   budget in the params unit)
    training  = adapter x (4 weight + 4 gradient + 8 AdamW moments) bytes   (adapters train in float32)

Activations are left out (they depend on batch and length), so the plan is a floor: a device with less
free memory than `weights + training` cannot hold the run, one with more may still be too small.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from senslora.core.targets import find_target_layers
from senslora.finetune.model_loading import DTYPE_BYTES, QUANTIZED_BYTES, LoadSettings, dtype_name

ADAPTER_BYTES = 4  # float32 adapter weights
GRADIENT_BYTES = 4
ADAMW_BYTES = 8  # two float32 moments


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes a run will need at least, before activations."""

    parameters: int
    quantized_parameters: int
    weight_bytes: int
    adapter_parameters: int
    dtype: str
    quantization: str

    @property
    def training_bytes(self) -> int:
        """Adapter weights, their gradients and AdamW's two moments, all float32."""
        return self.adapter_parameters * (ADAPTER_BYTES + GRADIENT_BYTES + ADAMW_BYTES)

    def text(self, training: bool) -> str:
        """One line: the plan as printed before loading."""
        stored = self.dtype if self.quantization == "none" else f"{self.quantization}, rest {self.dtype}"
        line = f"memory plan: {self.parameters:,} parameters, weights {gigabytes(self.weight_bytes)} ({stored})"
        if training:
            line += (
                f"; adapter {self.adapter_parameters:,} parameters at the budget: weights, gradients and AdamW "
                f"{gigabytes(self.training_bytes)} (float32)"
            )
        return line + "; activations come on top"


def gigabytes(size: int) -> str:
    """Bytes in decimal units: GB, or MB below 1 GB, or KB below 1 MB."""
    if size >= 1e9:
        return f"{size / 1e9:.2f} GB"
    return f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.1f} KB"


def empty_model(model_config: Any, task: str, num_labels: int | None = None) -> nn.Module:
    """The model of `task` built from its config on the meta device: shapes only, no weights."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    with init_empty_weights():
        if task in ("classification", "regression"):
            labels = 1 if task == "regression" else (num_labels or 2)
            model = AutoModelForSequenceClassification.from_config(model_config, num_labels=labels)
        else:
            model = AutoModelForCausalLM.from_config(model_config)
    model.tie_weights()  # tied embeddings (SmolLM2, Gemma) are one tensor, as after from_pretrained
    return model


def quantized_parameter_names(model: nn.Module, keep: tuple[str, ...] | None) -> set[str]:
    """Weights bitsandbytes stores quantized: every Linear's weight except the output head and `keep`."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = set()
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or module is output:
            continue
        if keep and any(part in keep for part in name.split(".")):
            continue
        names.add(f"{name}.weight")
    return names


def plan_memory(
    model: nn.Module, settings: LoadSettings, avg_rank: int, targets: str | list[str] | None = None
) -> MemoryPlan:
    """The plan of `model` (an empty one, from `empty_model`) loaded with `settings`, adapted at `avg_rank`."""
    quantized = (
        quantized_parameter_names(model, settings.keep_unquantized) if settings.quantization != "none" else set()
    )
    dtype_bytes = DTYPE_BYTES[dtype_name(settings.dtype)]
    parameters = weight_bytes = quantized_count = 0.0
    seen: set[int] = set()
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if id(parameter) in seen:  # tied weights are stored once
            continue
        seen.add(id(parameter))
        count = parameter.numel()
        parameters += count
        if name in quantized:
            quantized_count += count
            weight_bytes += count * QUANTIZED_BYTES[settings.quantization]
        else:
            weight_bytes += count * dtype_bytes
    layers = find_target_layers(model, targets)
    return MemoryPlan(
        parameters=int(parameters),
        quantized_parameters=int(quantized_count),
        weight_bytes=round(weight_bytes),
        adapter_parameters=avg_rank * sum(layer.d_in + layer.d_out for layer in layers),
        dtype=dtype_name(settings.dtype),
        quantization=settings.quantization,
    )


def free_device_memory(device: torch.device) -> int | None:
    """Free bytes on a CUDA device (`torch.cuda.mem_get_info`); None where it is not known (CPU, MPS)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


def check_plan_fits(plan: MemoryPlan, device: torch.device, free: int | None, *, training: bool) -> None:
    """Raise ValueError if `free` bytes on `device` are known and below what the plan needs.

    Needed: the weights, plus the adapter's training state when `training`.
    """
    needed = plan.weight_bytes + (plan.training_bytes if training else 0)
    if free is None or needed <= free:
        return
    raise ValueError(
        f"{device} has {gigabytes(free)} free but the model needs at least {gigabytes(needed)} "
        f"({plan.dtype}, quantization {plan.quantization}, activations not counted): use --quantization nf4, "
        "--model-dtype bfloat16, or for `senslora sensitivity` --device-map auto to offload"
    )
