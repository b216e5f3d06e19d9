"""How a model's weights are loaded: their dtype, 4-/8-bit quantization, and Accelerate's device map.

    model_dtype    auto | float32 | bfloat16 | float16   (auto: the checkpoint's dtype on an accelerator,
                                                         float32 on the CPU)
    quantization   none | nf4 | int8                      (bitsandbytes through transformers'
                                                         BitsAndBytesConfig; QLoRA's NF4 with double
                                                         quantization, LLM.int8())
    device_map     none | auto                            (Accelerate big-model inference: layers placed
                                                         on GPU, CPU, then disk within max_memory)

Every check here reads only options and the model's config.json, so bad input is refused before any
weights load. Adapter weights stay float32 whatever the base's dtype (PEFT's autocast of adapter
weights), and the sensitivity accumulators stay float32/float64 (senslora.core.estimators).
"""

from __future__ import annotations

import importlib.util
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

MODEL_DTYPES = ("auto", "float32", "bfloat16", "float16")
QUANTIZATIONS = ("none", "nf4", "int8")
DEVICE_MAPS = ("none", "auto")
# Bytes per weight when stored at each dtype / quantization (NF4: 4 bits plus one float32 absmax per
# block of 64, which double quantization stores in 8 bits with a float32 per 256 blocks: ~4.127 bits).
DTYPE_BYTES = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0}
QUANTIZED_BYTES = {"nf4": 0.5 + 1 / 64 + 4 / (64 * 256), "int8": 1.0 + 4 / 4096}
MEMORY_SIZE = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>B|KB|MB|GB|TB|KIB|MIB|GIB|TIB)", re.IGNORECASE)
MEMORY_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
MEMORY_UNITS |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
MEMORY_DEVICE = re.compile(r"cpu|mps|disk|(?:cuda:)?(?P<index>[0-9]{1,3})")


@dataclass(frozen=True)
class LoadSettings:
    """What `from_pretrained` gets besides the location: dtype, quantization and placement."""

    dtype: torch.dtype = torch.float32
    quantization: str = "none"
    device_map: str | dict[str, Any] | None = None
    max_memory: dict[int | str, int] | None = None
    offload_folder: str | None = None
    keep_unquantized: tuple[str, ...] | None = None  # e.g. a new classification head; None: transformers'

    def from_pretrained_options(self) -> dict[str, Any]:
        """Keyword arguments for `AutoModel*.from_pretrained` (the quantization config built here)."""
        options: dict[str, Any] = {"dtype": self.dtype}
        if self.quantization != "none":
            options["quantization_config"] = quantization_config(
                self.quantization, self.dtype, keep_unquantized=self.keep_unquantized
            )
        if self.device_map is not None:
            options["device_map"] = self.device_map
        if self.max_memory is not None:
            options["max_memory"] = self.max_memory
        if self.offload_folder is not None:
            options["offload_folder"] = self.offload_folder
        return options

    @property
    def placed(self) -> bool:
        """True if `from_pretrained` places the weights itself (no `.to(device)` afterwards)."""
        return self.device_map is not None

    def describe(self) -> dict[str, Any]:
        """The settings as recorded in sensitivity.json and the adapter's sidecar."""
        return {
            "dtype": dtype_name(self.dtype),
            "quantization": self.quantization,
            "device_map": self.device_map if isinstance(self.device_map, str) or self.device_map is None else "fixed",
            "max_memory": {str(k): v for k, v in self.max_memory.items()} if self.max_memory else None,
            "offloaded": self.offload_folder is not None,
        }


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> 'bfloat16'."""
    return str(dtype).removeprefix("torch.")


def checkpoint_dtype(config: Any) -> torch.dtype | None:
    """The floating dtype a checkpoint's config.json records (`dtype`, formerly `torch_dtype`), or None."""
    if config is None:
        return None
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(value, str):
        value = getattr(torch, value, None)
    return value if isinstance(value, torch.dtype) and value.is_floating_point else None


def resolve_dtype(model_dtype: str, device: torch.device, config: Any = None) -> torch.dtype:
    """The dtype to load weights in: the one named, or for `auto` float32 on the CPU and the checkpoint's
    own dtype on an accelerator (float32 when the checkpoint names none).

    Raises:
        ValueError: float16 on the CPU (its half-precision kernels are missing or very slow there).
    """
    if model_dtype not in MODEL_DTYPES:
        raise ValueError(f"model_dtype {model_dtype!r} is not allowed; choose from {', '.join(MODEL_DTYPES)}")
    if model_dtype == "float16" and device.type == "cpu":
        raise ValueError("--model-dtype float16 cannot run on the CPU; use bfloat16 or float32 there")
    if model_dtype != "auto":
        return getattr(torch, model_dtype)
    if device.type == "cpu":
        return torch.float32
    return checkpoint_dtype(config) or torch.float32


def check_bitsandbytes(quantization: str) -> None:
    """Raise ValueError if `quantization` needs bitsandbytes and it is not installed (not importing it)."""
    if quantization != "none" and importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError(f"--quantization {quantization} needs bitsandbytes: pip install bitsandbytes")


def quantization_config(
    quantization: str, compute_dtype: torch.dtype, *, keep_unquantized: tuple[str, ...] | None = None
) -> Any:
    """transformers' BitsAndBytesConfig for `nf4` (QLoRA: NF4, double quantization, compute in
    `compute_dtype`) or `int8` (LLM.int8()); modules named in `keep_unquantized` stay in `compute_dtype`
    (default: transformers' choice, the output head). bitsandbytes is imported by transformers only then."""
    from transformers import BitsAndBytesConfig

    skip = {"llm_int8_skip_modules": list(keep_unquantized)} if keep_unquantized else {}
    if quantization == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
            **skip,
        )
    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, **skip)
    raise ValueError(f"quantization {quantization!r} is not allowed; choose from {', '.join(QUANTIZATIONS)}")


def parse_memory_size(text: str) -> int:
    """'200MB' -> 200_000_000, '1.5GiB' -> 1_610_612_736 (decimal KB/MB/GB/TB, binary KiB/MiB/GiB/TiB, B).

    Raises:
        ValueError: anything else (a bare number, an unknown unit, a negative or zero size).
    """
    match = MEMORY_SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"memory size {text!r} is not a number with a unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")
    size = int(float(match.group("number")) * MEMORY_UNITS[match.group("unit").upper()])
    if size < 1:
        raise ValueError(f"memory size {text!r} must be at least 1 byte")
    return size


def parse_max_memory(text: str) -> dict[int | str, int]:
    """'cuda:0=20GiB,cpu=30GiB' -> {0: 21474836480, 'cpu': 32212254720}: Accelerate's max_memory.

    Devices: cpu, mps, disk, a GPU index N or cuda:N; each given once.

    Raises:
        ValueError: an entry that is not DEVICE=SIZE, an unknown device, a device twice, a bad size.
    """
    limits: dict[int | str, int] = {}
    for entry in text.split(","):
        device, equals, size = entry.partition("=")
        device = device.strip().lower()
        match = MEMORY_DEVICE.fullmatch(device)
        if not equals or match is None:
            raise ValueError(
                f"max_memory entry {entry.strip()!r} is not DEVICE=SIZE with DEVICE cpu, mps, disk, N or cuda:N "
                "(e.g. 'cuda:0=20GiB,cpu=30GiB')"
            )
        key: int | str = int(match.group("index")) if match.group("index") is not None else device
        if key in limits:
            raise ValueError(f"max_memory names device {device!r} twice")
        try:
            limits[key] = parse_memory_size(size)
        except ValueError as error:
            raise ValueError(f"max_memory entry {entry.strip()!r}: {error}") from None
    return limits


def check_offload_folder(folder: str) -> None:
    """Raise ValueError unless `folder` is a writable directory or can be created in one.

    Nothing is left behind: a probe file is created and removed in the folder (or in its nearest existing
    parent, where transformers will create it).
    """
    path = Path(folder).expanduser()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"offload folder {folder!r} is not a directory (or lies under a file)")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".senslora-write-check-"):
            pass
    except OSError as error:
        raise ValueError(f"offload folder {folder!r} is not writable: {error.strerror or error}") from None


def is_quantized(model: torch.nn.Module) -> bool:
    """True for a model loaded in 4 or 8 bits by bitsandbytes."""
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def keep_4bit_weights_unpacked(model: torch.nn.Module) -> int:
    """Turn off bitsandbytes' AVX512-BF16 CPU repacking of 4-bit weights; returns how many layers it touched.

    On CPUs with AVX512-BF16, bitsandbytes (0.50) repacks a Linear4bit's weight the first time it runs in eval
    mode without gradients; the repacked layer then fails in training (an in-place bias add on a tensor that
    needs grad) and for layers narrower than one quantization block (64 inputs). Training and calibration
    alternate between the modes, so the weights stay in the portable layout.
    """
    touched = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            touched += 1
    return touched
