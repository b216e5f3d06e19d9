"""The run configuration: one typed dataclass is the config file schema and the CLI's option list.

Precedence: field defaults < config file (YAML or JSON, parsed safely) < command-line flags. The
defaults are the main job: the real MiniLM on the real Rotten Tomatoes snippets, Sensitivity-LoRA at
average rank 4, sized to finish in minutes on a 2-core CPU.
"""

from __future__ import annotations

import functools
import json
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from senslora.core.allocation import BUDGET_UNITS, DEFAULT_MAX_RANK_FACTOR, METRIC_GROUPS, SCHEMES, WEIGHTINGS
from senslora.core.peft_export import ALPHA_MODES
from senslora.core.sensitivity import ESTIMATORS
from senslora.finetune.methods import METHODS
from senslora.finetune.training import (
    OWNED_TRAINER_ARGUMENTS,
    PRECISIONS,
    REPORTERS,
    SCHEDULERS,
    TrainingConfig,
    check_trainer_arguments,
    owned_argument_message,
    trainer_argument_names,
)
from senslora.utils.io import read_text

MAX_INT = 2**31 - 1  # largest integer option: keeps seeds, counts and lengths inside every library's range
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:[0-9]{1,3})?")


def option(default: Any, help: str, *, choices: tuple[str, ...] | None = None, flag: bool = True) -> Any:
    """A dataclass field carrying its CLI help text (and allowed values); lists and mappings get a fresh copy
    each time. `flag=False`: set only from a config file (or Python), no command-line flag."""
    metadata = {"help": help, "choices": choices, "flag": flag}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def has_flag(name: str) -> bool:
    """Whether RunConfig's field `name` has a command-line flag (all but trainer_arguments)."""
    return {item.name: item for item in fields(RunConfig)}[name].metadata.get("flag", True)


# Safeguard of the loss-based estimators against a freshly initialised task head, on unless set explicitly
# (chosen by the head benchmark in BENCHMARKS.md).
LOSS_BASED_ESTIMATORS = ("fisher", "hutchinson", "kfac", "gradient_spectrum")
DEFAULT_HEAD_WARMUP_STEPS = 50


def effective_head_warmup_steps(steps: int | None, estimator: str, task: str) -> int:
    """Head warm-up steps to run: `steps` if given, else DEFAULT_HEAD_WARMUP_STEPS for a loss-based
    estimator on a task that gets a new head (classification, regression), else 0."""
    if estimator not in LOSS_BASED_ESTIMATORS:
        return 0
    if steps is not None:
        return steps
    return DEFAULT_HEAD_WARMUP_STEPS if task in ("classification", "regression") else 0


def effective_max_rank_factor(factor: float | None) -> float | None:
    """The cap factor to allocate with, for every estimator: `factor`, or None (no cap) for 0 or none."""
    return None if factor is None or factor == 0 else factor


@dataclass
class RunConfig:
    """Every option of `senslora sensitivity / allocate / finetune / evaluate`."""

    # model and data
    model: str = option("minilm", "model: a short name (minilm, smollm2), a local directory or a hub id")
    data: str = option(
        "rotten_tomatoes",
        "data: an offline name (rotten_tomatoes, wikipedia, convention_speeches, hamlet), a GLUE task "
        "(sst2, glue/mrpc, ...), a local csv/tsv/json/jsonl/txt file, or a hub dataset id",
    )
    task: str | None = option(
        None, "task (default: inferred)", choices=("classification", "regression", "causal_lm", "instruction")
    )
    text_column: str | None = option(None, "text column (default: the preset's or 'text'/'sentence')")
    text_pair_column: str | None = option(None, "second text column for sentence-pair tasks")
    label_column: str | None = option(None, "label column (default: the preset's or 'label')")
    prompt_column: str | None = option(None, "instruction prompt column")
    response_column: str | None = option(None, "instruction response column")
    dataset_config: str | None = option(None, "hub dataset configuration name")
    validation_data: str | None = option(None, "validation split name (hub) or file; default: carved from train")
    validation_fraction: float = option(0.1, "share of train used for validation when none is given")
    max_train_examples: int | None = option(2000, "keep a seeded sample of this many training examples (none: all)")
    max_validation_examples: int | None = option(1000, "keep at most this many validation examples (none: all)")
    max_length: int = option(128, "truncate or chunk token sequences to this length")
    trust_remote_code: bool = option(False, "allow model code from the hub (only for models you trust)")
    # calibration and sensitivity
    calibration_data: str | None = option(None, "separate calibration source (default: a sample of train)")
    calibration_examples: int = option(256, "calibration examples")
    calibration_batch_size: int = option(16, "calibration batch size")
    estimator: str = option("activation", "Hessian-diagonal estimator", choices=ESTIMATORS)
    target_modules: list[str] | None = option(
        None, "target layers: names or suffixes (default: every Linear/Conv1D except the output head)"
    )
    target_regex: str | None = option(None, "target layers as one regular expression over full names")
    topk_fraction: float = option(0.5, "top-k metric: k = floor(m * fraction)")
    energy_threshold: float = option(0.85, "effective-rank metric threshold alpha")
    num_probes: int = option(4, "hutchinson: probes per batch")
    per_example: bool = option(False, "fisher: per-example gradients instead of batch gradients")
    head_warmup_steps: int | None = option(
        None,
        "loss-based estimators (fisher, hutchinson, kfac, gradient_spectrum): train only the new task head this "
        "many steps first "
        f"(default: {DEFAULT_HEAD_WARMUP_STEPS} for a new classification/regression head, else 0)",
    )
    restore_warmed_head: bool = option(False, "after the sensitivity pass, put back the head as it was before warm-up")
    # allocation
    avg_rank: int = option(4, "average LoRA rank: uniform LoRA's rank, the budget of senslora")
    scheme: str = option("sra", "allocation scheme", choices=SCHEMES)
    budget_unit: str = option(
        "params",
        "params: uniform LoRA's parameter count avg_rank x sum(d_in + d_out); rank: avg_rank x number of "
        "modules (the paper's)",
        choices=BUDGET_UNITS,
    )
    min_rank: int = option(1, "smallest rank (0 leaves a module out)")
    max_rank: int | None = option(None, "largest rank (none: no cap; never above a module's min(d_in, d_out))")
    max_rank_factor: float | None = option(
        DEFAULT_MAX_RANK_FACTOR,
        "cap every rank at floor(factor x avg_rank), for every estimator (EVA uses 2); 0: no cap, as in the paper",
    )
    weighting: str = option("cv", "fusion weights: cv = std/mean^2, equal = 0.5/mean", choices=WEIGHTINGS)
    metrics: list[str] = option(list(METRIC_GROUPS), "metric groups fused into theta", choices=METRIC_GROUPS)
    num_groups: int = option(3, "pra: number of groups")
    ranks: str | None = option(None, "use this ranks.json instead of computing sensitivity and allocation")
    # adapter
    method: str = option("senslora", "fine-tuning method", choices=METHODS)
    lora_alpha: float | None = option(None, "LoRA alpha at the average rank (default: 2 x avg_rank)")
    alpha_mode: str = option("scale", "scale: alpha/r equal to uniform LoRA's; fixed: alpha fixed", choices=ALPHA_MODES)
    lora_dropout: float = option(0.05, "LoRA dropout")
    # training
    epochs: int = option(2, "training epochs")
    batch_size: int = option(16, "training batch size")
    eval_batch_size: int = option(64, "evaluation batch size")
    learning_rate: float = option(1e-3, "peak learning rate (AdamW)")
    weight_decay: float = option(0.0, "AdamW weight decay")
    warmup_ratio: float = option(0.06, "share of steps for linear warmup")
    scheduler: str = option("linear", "learning-rate decay after warmup", choices=SCHEDULERS)
    gradient_accumulation_steps: int = option(1, "micro-batches per optimizer step")
    max_grad_norm: float | None = option(1.0, "gradient clipping norm (none: off)")
    max_steps: int | None = option(None, "stop after this many optimizer steps (none: all epochs)")
    mixed_precision: str = option("no", "autocast precision (bf16 on CPU/GPU, fp16 on CUDA)", choices=PRECISIONS)
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass")
    save_steps: int | None = option(None, "also checkpoint every N optimizer steps (none: at each epoch's end only)")
    eval_steps: int | None = option(None, "evaluate every N optimizer steps (none: at each epoch's end)")
    early_stopping_patience: int | None = option(
        None, "stop after this many evaluations without a better main metric (none: never)"
    )
    report_to: list[str] = option(["none"], "send logs to these trackers (Trainer's report_to)", choices=REPORTERS)
    log_every: int = option(10, "log the training loss every N steps")
    trainer_arguments: dict[str, Any] = option(
        {},
        "config file only: further transformers.TrainingArguments fields passed to the Trainer as they are "
        "(e.g. dataloader_num_workers, push_to_hub, hub_model_id); not the ones senslora sets from its options",
        flag=False,
    )
    max_generation_examples: int = option(32, "instruction tasks: validation examples scored by generation")
    max_new_tokens: int = option(64, "instruction tasks: tokens generated per example")
    seed: int = option(0, "seed of data splits, sampling, initialisation and training")
    # run
    output_dir: str | None = option(None, "run directory (default: runs/<model>-<data>-<method>-r<rank>-s<seed>)")
    overwrite: bool = option(False, "replace an existing output: a finished run in output_dir, or the --output file")
    resume: bool = option(False, "continue an unfinished run in output_dir from its last checkpoint")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    progress: bool = option(True, "show progress bars")

    def validate(self) -> None:
        """Raise ValueError naming the first option with a value that is not allowed.

        Covers every option on its own (type, range, finite, non-empty) and the pairs that must agree;
        nothing is loaded, so this runs before any expensive work.
        """
        hints = field_types()
        for item in fields(self):
            _check_type(item.name, hints[item.name], getattr(self, item.name))
        for item in fields(self):
            choices = item.metadata.get("choices")
            value = getattr(self, item.name)
            if choices and value is not None:
                values = value if isinstance(value, list) else [value]
                bad = [v for v in values if v not in choices]
                if bad:
                    raise ValueError(f"{item.name}: {bad[0]!r} is not allowed; choose from {', '.join(choices)}")
        positive = ["calibration_examples", "calibration_batch_size", "avg_rank", "num_probes", "num_groups"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}")
        for name in ("max_train_examples", "max_validation_examples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or none, got {value}")
        if not 0 <= self.seed <= MAX_INT:
            raise ValueError(f"seed must lie in [0, {MAX_INT}], got {self.seed}")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must lie strictly between 0 and 1, got {self.validation_fraction}")
        for name in ("topk_fraction", "energy_threshold"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must lie in (0, 1], got {getattr(self, name)}")
        if self.head_warmup_steps is not None and self.head_warmup_steps < 0:
            raise ValueError(f"head_warmup_steps must be >= 0, got {self.head_warmup_steps}")
        if self.min_rank < 0:
            raise ValueError(f"min_rank must be >= 0, got {self.min_rank}")
        if self.min_rank > self.avg_rank:
            raise ValueError(
                f"min_rank {self.min_rank} exceeds avg_rank {self.avg_rank}: the budget is too small to give every "
                "module its minimum"
            )
        if self.max_rank is not None and self.max_rank < max(1, self.min_rank):
            raise ValueError(f"max_rank must be >= max(1, min_rank={self.min_rank}) or none, got {self.max_rank}")
        if self.max_rank_factor not in (None, 0) and not 1 <= self.max_rank_factor * self.avg_rank <= MAX_INT:
            raise ValueError(
                f"max_rank_factor must give a cap floor(factor x avg_rank) between 1 and {MAX_INT}, "
                f"got {self.max_rank_factor}"
            )
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must lie in [0, 1), got {self.lora_dropout}")
        if self.lora_alpha is not None and not (self.lora_alpha > 0 and math.isfinite(self.lora_alpha)):
            raise ValueError(f"lora_alpha must be a positive number, got {self.lora_alpha}")
        columns = ["text_column", "text_pair_column", "label_column", "prompt_column", "response_column"]
        given = [(name, getattr(self, name)) for name in columns if getattr(self, name) is not None]
        for index, (name, value) in enumerate(given):
            other = next((o for o, v in given[index + 1 :] if v == value), None)
            if other is not None:
                raise ValueError(f"{name} and {other} both name column {value!r}; each role needs its own column")
        if self.target_modules is not None and self.target_regex is not None:
            raise ValueError("give target_modules or target_regex, not both")
        if self.target_modules is not None and not self.target_modules:
            raise ValueError("target_modules must name at least one module")
        if self.target_regex is not None:
            try:
                re.compile(self.target_regex)
            except (re.error, RecursionError, OverflowError) as error:
                raise ValueError(
                    f"target_regex {self.target_regex!r} is not a valid regular expression: {error}"
                ) from None
        if not self.metrics:
            raise ValueError(f"metrics must name at least one of {', '.join(METRIC_GROUPS)}")
        if self.ranks is not None and self.method != "senslora":
            raise ValueError(f"ranks applies to method senslora only, not to method {self.method!r}")
        if self.overwrite and self.resume:
            raise ValueError("--overwrite and --resume exclude each other")
        if self.max_generation_examples < 0:
            raise ValueError(f"max_generation_examples must be >= 0, got {self.max_generation_examples}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise ValueError(f"device {self.device!r} is not allowed; use auto, cpu, cuda, cuda:N or mps")
        self.training().validate()

    @property
    def alpha(self) -> float:
        """lora_alpha, defaulting to twice the average rank."""
        return self.lora_alpha if self.lora_alpha is not None else 2.0 * self.avg_rank

    @property
    def targets(self) -> str | list[str] | None:
        return self.target_regex if self.target_regex is not None else self.target_modules

    def training(self) -> TrainingConfig:
        names = {f.name for f in fields(TrainingConfig)}
        return TrainingConfig(**{name: getattr(self, name) for name in names})

    def run_dir(self) -> Path:
        if self.output_dir:
            return Path(self.output_dir)
        data_name = Path(self.data).stem if Path(self.data).suffix else self.data.replace("/", "_")
        model_name = Path(self.model).name or self.model
        return Path("runs") / f"{model_name}-{data_name}-{self.method}-r{self.avg_rank}-s{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@functools.cache
def field_types() -> dict[str, Any]:
    """Resolved type annotations of RunConfig's fields (computed once: the class does not change)."""
    return typing.get_type_hints(RunConfig)


def base_type(annotation: Any) -> tuple[Any, bool, bool]:
    """(scalar type, optional, is_list) of an annotation such as `int | None` or `list[str] | None`."""
    optional = False
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        optional = type(None) in args
        annotation = next(a for a in args if a is not type(None))
    if typing.get_origin(annotation) is list:
        return typing.get_args(annotation)[0], optional, True
    return annotation, optional, False


def _check_type(name: str, annotation: Any, value: Any) -> None:
    """Raise ValueError if `value` does not fit the field's type, is a non-finite number, an integer
    beyond MAX_INT, or an empty string (or one holding a NUL character). trainer_arguments is checked by
    `TrainingConfig.validate` (names only: TrainingArguments checks the values)."""
    if typing.get_origin(annotation) is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{name} must be a mapping, got {value!r}")
        return
    scalar, optional, is_list = base_type(annotation)
    if value is None:
        if optional:
            return
        raise ValueError(f"{name} must not be empty (none)")
    values = value if is_list else [value]
    if is_list and not isinstance(value, list):
        raise ValueError(f"{name} must be a list, got {value!r}")
    for item in values:
        if scalar is bool:
            if not isinstance(item, bool):
                raise ValueError(f"{name} must be true or false, got {item!r}")
        elif scalar is int:
            if isinstance(item, bool) or not isinstance(item, int):
                raise ValueError(f"{name} must be an integer, got {item!r}")
            if abs(item) > MAX_INT:
                raise ValueError(f"{name} must be an integer of at most {MAX_INT}, got {item}")
        elif scalar is float:
            if isinstance(item, bool) or not isinstance(item, int | float):
                raise ValueError(f"{name} must be a number, got {item!r}")
            if not math.isfinite(item):
                raise ValueError(f"{name} must be a finite number, got {item!r}")
        else:
            if not isinstance(item, str):
                raise ValueError(f"{name} must be a string, got {item!r}")
            if not item.strip() or "\x00" in item:
                raise ValueError(f"{name} must be a non-empty string without NUL characters, got {item!r}")


def coerce_value(name: str, value: Any) -> Any:
    """Check and convert a config-file value to the field's type; ValueError names the key."""
    if typing.get_origin(field_types()[name]) is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"config key {name!r} must be a mapping of TrainingArguments fields to values")
        return {str(key).replace("-", "_"): item for key, item in value.items()}
    scalar, optional, is_list = base_type(field_types()[name])
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "all")):
        if optional:
            return None
        raise ValueError(f"config key {name!r} cannot be empty")
    if is_list:
        values = value if isinstance(value, list) else [value]
        return [coerce_scalar(name, scalar, v) for v in values]
    return coerce_scalar(name, scalar, value)


def coerce_scalar(name: str, scalar: Any, value: Any) -> Any:
    if scalar is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"config key {name!r} must be true or false, got {value!r}")
    if scalar is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"config key {name!r} must be an integer, got {value!r}")
        return value
    if scalar is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"config key {name!r} must be a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"config key {name!r} must be a string, got {value!r}")
    return value


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file (safe parsing only) into {field name: value}.

    Keys are RunConfig's option names; a key that is instead a `transformers.TrainingArguments` field goes
    into `trainer_arguments` (passed to the Trainer as it is), unless senslora sets that field from one of
    its own options (the message names the option). A `trainer_arguments` mapping (as config.json records
    it) is read the same way.
    """
    text = read_text(path, "config file")
    suffix = Path(path).suffix.lower()
    try:
        if suffix == ".json":
            document = json.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            document = yaml.safe_load(text)
        else:
            raise ValueError(f"config file {str(path)!r} must end in .yaml, .yml or .json")
    except (json.JSONDecodeError, ValueError) as error:
        if isinstance(error, ValueError) and not isinstance(error, json.JSONDecodeError):
            raise
        raise ValueError(f"config file {str(path)!r} is not valid JSON: {error}") from None
    except Exception as error:  # yaml.YAMLError and friends
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"config file {str(path)!r} is not valid YAML: {first}") from None
    if document is None:
        return {}
    if not isinstance(document, Mapping):
        raise ValueError(f"config file {str(path)!r} must hold a mapping of option names to values")
    known = {f.name for f in fields(RunConfig)}
    values: dict[str, Any] = {}
    passed_through: dict[str, Any] = {}
    for key, value in document.items():
        name = str(key).replace("-", "_")
        if name in known:
            values[name] = coerce_value(name, value)
        elif name in trainer_argument_names():
            if name in OWNED_TRAINER_ARGUMENTS:
                raise ValueError(f"config file {str(path)!r}: {owned_argument_message(name)}")
            passed_through[name] = value
        else:
            raise ValueError(
                f"config file {str(path)!r}: unknown option {key!r} (neither a senslora option nor a "
                "transformers.TrainingArguments field)"
            )
    if passed_through:
        values["trainer_arguments"] = {**values.get("trainer_arguments", {}), **passed_through}
    if "trainer_arguments" in values:
        try:
            check_trainer_arguments(values["trainer_arguments"])
        except ValueError as error:
            raise ValueError(f"config file {str(path)!r}: {error}") from None
    return values
