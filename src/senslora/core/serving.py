"""Serving-safe adapters: every module's LoRA scale folded into its weights, read alike by every runtime.

PEFT scales module m's update by s_m = alpha_m / r_m (alpha_m / sqrt(r_m) with use_rslora), reading
alpha_m and r_m from `alpha_pattern` / `rank_pattern`. Other runtimes read less of the config:

- vLLM computes ONE scale, lora_alpha / r (lora_alpha / sqrt(r) with use_rslora), from the global r and
  lora_alpha, for every module, and ignores rank_pattern and alpha_pattern;
- llama.cpp's converter keeps one lora_alpha and scales each tensor by lora_alpha / (its own rank, read
  from lora_A's shape).

With unequal ranks no single (lora_alpha, r) makes those two agree: vLLM's scale is the same for every
module, llama.cpp's changes with the module's rank. They agree when every module has the same rank, so
baking also pads every module to the largest rank R with zeros, which leaves B A unchanged:

    A'_m = [A_m ; 0]                 (R x d_in)     zero rows r_m+1..R
    B'_m = s_m * [B_m , 0]           (d_out x R)    zero columns r_m+1..R  (a lora_B bias: s_m * bias)
    r = lora_alpha = R, no rank_pattern, no alpha_pattern, use_rslora = False

Every reader then computes scale 1 for every module (PEFT: R / R; vLLM: lora_alpha / r = 1; llama.cpp:
lora_alpha / R = 1; PEFT's own convention for baked adapters, alpha equal to rank), and

    delta W'_m = 1 * B'_m A'_m = s_m * B_m A_m = delta W_m.

The padding costs no serving compute in vLLM, whose LoRA buffers are sized by --max-lora-rank (which must
be >= R anyway); in llama.cpp it costs the LoRA matmuls at rank R instead of r_m. Padded rows and columns
stay zero if the adapter is trained further (their gradients are zero), so it keeps its ranks in effect.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from senslora.utils.io import atomic_directory, read_text

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
WEIGHT_PREFIX = "base_model.model."
LORA_A, LORA_B = ".lora_A.weight", ".lora_B.weight"


def module_scale(config: Mapping[str, Any], module_name: str, rank: int) -> float:
    """The scale PEFT gives `module_name` of rank `rank`: alpha / r, or alpha / sqrt(r) with use_rslora.

    alpha is the alpha_pattern entry whose key matches the end of the name (PEFT's rule), else lora_alpha.
    """
    from peft.utils.other import get_pattern_key

    alpha_pattern = config.get("alpha_pattern") or {}
    alpha = alpha_pattern.get(get_pattern_key(list(alpha_pattern), module_name), config["lora_alpha"])
    return float(alpha) / (math.sqrt(rank) if config.get("use_rslora") else rank)


def lora_modules(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """The weight-key prefixes of every LoRA pair (`base_model.model.<module>`), in file order."""
    return [key.removesuffix(LORA_A) for key in tensors if key.endswith(LORA_A)]


def bake_scale(
    config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A PEFT LoRA adapter (config dict, weights) with every scale folded into lora_B, padded to rank R.

    Returns the new config (r = lora_alpha = R, no patterns, no rsLoRA) and weights; see the module
    docstring for the formula. Other weights (modules_to_save, e.g. a task head) are kept as they are.

    Raises:
        ValueError: not a LoRA adapter, a DoRA adapter (its magnitude is not a plain scale), or no LoRA pair.
    """
    if config.get("peft_type") != "LORA":
        raise ValueError(f"only LoRA adapters can be baked, not peft_type {config.get('peft_type')!r}")
    if config.get("use_dora"):
        raise ValueError("a DoRA adapter cannot be baked into plain LoRA weights; export it merged (--merge)")
    prefixes = lora_modules(tensors)
    if not prefixes:
        raise ValueError("the adapter holds no lora_A / lora_B weights")
    max_rank = max(int(tensors[p + LORA_A].shape[0]) for p in prefixes)
    baked = dict(tensors)
    for prefix in prefixes:
        lora_a, lora_b = tensors[prefix + LORA_A], tensors[prefix + LORA_B]  # (r, d_in), (d_out, r)
        rank = int(lora_a.shape[0])
        scale = module_scale(config, prefix.removeprefix(WEIGHT_PREFIX), rank)
        padded_a = lora_a.new_zeros((max_rank, lora_a.shape[1]))  # (R, d_in)
        padded_a[:rank] = lora_a
        padded_b = lora_b.new_zeros((lora_b.shape[0], max_rank))  # (d_out, R)
        padded_b[:, :rank] = (lora_b.double() * scale).to(lora_b.dtype)
        baked[prefix + LORA_A], baked[prefix + LORA_B] = padded_a, padded_b
        bias_key = prefix + ".lora_B.bias"
        if bias_key in tensors:  # PEFT scales lora_B's output, bias included
            baked[bias_key] = (tensors[bias_key].double() * scale).to(tensors[bias_key].dtype)
    new_config = dict(config)
    new_config.update(r=max_rank, lora_alpha=max_rank, rank_pattern={}, alpha_pattern={}, use_rslora=False)
    return new_config, {key: value.contiguous() for key, value in baked.items()}


def read_adapter(directory: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """adapter_config.json and adapter_model.safetensors of a PEFT adapter directory.

    Raises:
        ValueError: a missing or unreadable config, or no safetensors weights.
    """
    from safetensors.torch import load_file

    folder = Path(directory)
    text = read_text(folder / ADAPTER_CONFIG, "adapter config")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"adapter config {str(folder / ADAPTER_CONFIG)!r} is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise ValueError(f"adapter config {str(folder / ADAPTER_CONFIG)!r} is not a JSON object")
    weights = folder / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise ValueError(f"adapter {str(folder)!r} has no {ADAPTER_WEIGHTS}")
    return config, load_file(str(weights))


def write_baked_adapter(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Write the serving-safe form of the adapter in `source` to the directory `target`, atomically.

    Every file of `source` but the config and the weights (e.g. a README or senslora.json) is copied.
    """
    from safetensors.torch import save_file

    config, tensors = read_adapter(source)
    new_config, new_tensors = bake_scale(config, tensors)

    def write(folder: Path) -> None:
        for entry in Path(source).iterdir():
            if entry.is_file() and entry.name not in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
                shutil.copy2(entry, folder / entry.name)
        save_file(new_tensors, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (folder / ADAPTER_CONFIG).write_text(json.dumps(new_config, indent=2, sort_keys=True) + "\n")

    return atomic_directory(target, write)
