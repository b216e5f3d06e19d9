"""The run configuration: option groups that validate themselves, and `RunConfig`, all of them together.

Each group is a dataclass of typed options (`senslora.finetune.options.option`): its defaults are the only
defaults, Python and the command line alike (`senslora finetune` builds one flag per field, under the
group's heading), and its `validate()` checks its own fields. `RunConfig` inherits every group, so a run's
options stay one flat namespace (`config.avg_rank`, `--avg-rank`, `avg_rank:` in a config file) and its
`validate()` runs each group's checks, then the checks between groups.

    DataOptions         model, data source, columns, sizes, sequence length
    CalibrationOptions  calibration data, the estimator and its settings, targets, head warm-up
    AllocationOptions   the rank budget and how theta is turned into ranks
    AdapterOptions      the fine-tuning method, given ranks, LoRA alpha and dropout
    TrainingConfig      the optimisation settings (senslora.finetune.training.settings)
    EvaluationOptions   generation-based evaluation of instruction tasks
    RunOptions          run directory, overwrite/resume, device, progress bars

Precedence: field defaults < config file (YAML or JSON, `senslora.finetune.config_file`) < command-line
flags. The defaults are the main job: the real MiniLM on the real Rotten Tomatoes snippets,
Sensitivity-LoRA at average rank 4, sized to finish in minutes on a 2-core CPU.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from senslora.core.allocation_options import BUDGET_UNITS, METRIC_GROUPS, SCHEMES, WEIGHTINGS
from senslora.core.budget import DEFAULT_MAX_RANK_FACTOR
from senslora.core.peft_export import ALPHA_MODES
from senslora.core.sensitivity import ESTIMATORS
from senslora.finetune.methods import METHODS, get_method
from senslora.finetune.model_loading import (
    DEVICE_MAPS,
    MODEL_DTYPES,
    QUANTIZATIONS,
    check_offload_folder,
    parse_max_memory,
)
from senslora.finetune.options import MAX_INT, check_field_values, default_of, option
from senslora.finetune.training.settings import TrainingConfig

DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:[0-9]{1,3})?")
TASKS = ("classification", "regression", "causal_lm", "instruction")

CALIBRATION_UNITS = ("blocks", "texts")  # what calibration_examples counts on causal_lm data
CALIBRATION_TOKEN_CHOICES = ("auto", "completion", "all")  # which tokens the forward-only estimators count
FORWARD_ONLY_ESTIMATORS = ("activation", "obd")
# Safeguard of the loss-based estimators against a freshly initialised task head, on unless set explicitly
# (chosen by the head benchmark in BENCHMARKS.md).
LOSS_BASED_ESTIMATORS = ("fisher", "hutchinson", "kfac", "gradient_spectrum")
DEFAULT_HEAD_WARMUP_STEPS = 50
# Estimators that only run forward passes: the ones that work on a quantized or offloaded base.
DEVICE_MAP_ESTIMATORS = ("activation",)
QUANTIZED_ESTIMATORS = ("activation",)
DEFAULT_LEARNING_RATE = default_of({item.name: item for item in fields(TrainingConfig)}["learning_rate"])


def effective_head_warmup_steps(steps: int | None, estimator: str, task: str) -> int:
    """Head warm-up steps to run: `steps` if given, else DEFAULT_HEAD_WARMUP_STEPS for a loss-based
    estimator on a task that gets a new head (classification, regression), else 0."""
    if estimator not in LOSS_BASED_ESTIMATORS:
        return 0
    if steps is not None:
        return steps
    return DEFAULT_HEAD_WARMUP_STEPS if task in ("classification", "regression") else 0


def effective_calibration_tokens(choice: str, estimator: str, task: str) -> str:
    """The core's calibration_tokens: "completion" for auto on instruction data with a forward-only
    estimator, else "all"; an explicit "completion" on other data is refused.

    Raises:
        ValueError: calibration_tokens completion on data without a completion (not an instruction task).
    """
    if choice == "completion" and task != "instruction":
        raise ValueError(
            f"calibration_tokens completion needs instruction data (prompt and response), not a {task} task"
        )
    if choice == "auto":
        return "completion" if task == "instruction" and estimator in FORWARD_ONLY_ESTIMATORS else "all"
    return choice


def effective_max_rank_factor(factor: float | None) -> float | None:
    """The cap factor to allocate with, for every estimator: `factor`, or None (no cap) for 0 or none."""
    return None if factor is None or factor == 0 else factor


@dataclass
class DataOptions:
    """Where the examples come from and how they are cut: model, data source, columns, sizes."""

    model: str = option("minilm", "model: a short name (minilm, smollm2), a local directory or a hub id")
    model_dtype: str = option(
        "auto",
        "dtype of the base model's weights (auto: the checkpoint's own on an accelerator, float32 on the CPU); "
        "adapters and sensitivity accumulators stay float32",
        choices=MODEL_DTYPES,
    )
    quantization: str = option(
        "none",
        "load the base model quantized with bitsandbytes: nf4 (QLoRA 4-bit) or int8; sensitivity then needs "
        "the activation estimator",
        choices=QUANTIZATIONS,
    )
    data: str = option(
        "rotten_tomatoes",
        "data: an offline name (rotten_tomatoes, wikipedia, convention_speeches, hamlet), a GLUE task "
        "(sst2, glue/mrpc, ...), a local csv/tsv/json/jsonl/txt file, or a hub dataset id",
    )
    task: str | None = option(None, "task (default: inferred)", choices=TASKS)
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
    test_data: str | None = option(
        None, "test split name (hub) or file; default: the hub dataset's labelled 'test' split, else carved from train"
    )
    test_examples: int = option(
        1000,
        "test split size: a fixed carve of at most this many training rows (and a fifth of them), or a fixed "
        "sample of a given test split (0: no test split)",
    )
    max_length: int = option(128, "truncate or chunk token sequences to this length")
    trust_remote_code: bool = option(False, "allow model code from the hub (only for models you trust)")

    def validate(self) -> None:
        """Raise ValueError naming the first data option out of range, or two roles given one column."""
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}")
        for name in ("max_train_examples", "max_validation_examples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or none, got {value}")
        if self.test_examples < 0:
            raise ValueError(f"test_examples must be >= 0, got {self.test_examples}")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must lie strictly between 0 and 1, got {self.validation_fraction}")
        columns = ["text_column", "text_pair_column", "label_column", "prompt_column", "response_column"]
        given = [(name, getattr(self, name)) for name in columns if getattr(self, name) is not None]
        for index, (name, value) in enumerate(given):
            other = next((o for o, v in given[index + 1 :] if v == value), None)
            if other is not None:
                raise ValueError(f"{name} and {other} both name column {value!r}; each role needs its own column")


@dataclass
class CalibrationOptions:
    """The sensitivity pass: calibration data, estimator and its settings, target layers, head warm-up."""

    calibration_data: str | None = option(None, "separate calibration source (default: a sample of train)")
    calibration_examples: int = option(
        256, "calibration examples (causal_lm data: blocks of --max-length tokens, see --calibration-unit)"
    )
    calibration_unit: str = option(
        "blocks",
        "what --calibration-examples counts on causal_lm data: blocks of --max-length tokens (cut from as many "
        "sampled texts), or whole texts, however many blocks they make",
        choices=CALIBRATION_UNITS,
    )
    calibration_batch_size: int = option(16, "calibration batch size")
    calibration_tokens: str = option(
        "auto",
        "tokens the activation and obd estimators count: completion = only those the completion-only loss "
        "scores (instruction data, as training and the loss-based estimators), all = every non-padding token; "
        "auto = completion for instruction data, else all (default: auto)",
        choices=CALIBRATION_TOKEN_CHOICES,
    )
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
    head_warmup_learning_rate: float | None = option(
        None,
        "learning rate of the head warm-up (default: the training learning rate, --learning-rate, "
        f"{DEFAULT_LEARNING_RATE:g} unless given)",
    )
    restore_warmed_head: bool = option(False, "after the sensitivity pass, put back the head as it was before warm-up")
    device_map: str = option(
        "none",
        "sensitivity only: place the model with Accelerate's big-model inference (auto: GPUs, then CPU, then "
        "disk, within --max-memory); activation estimator",
        choices=DEVICE_MAPS,
    )
    max_memory: str | None = option(
        None, "with --device-map: memory per device, e.g. 'cuda:0=20GiB,cpu=30GiB' (units B, KB, MB, GB, KiB, MiB, GiB)"
    )
    offload_folder: str | None = option(None, "with --device-map: folder for the weights offloaded to disk")

    def validate(self) -> None:
        """Raise ValueError naming the first calibration option out of range."""
        for name in ("calibration_examples", "calibration_batch_size", "num_probes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("topk_fraction", "energy_threshold"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must lie in (0, 1], got {getattr(self, name)}")
        if self.head_warmup_steps is not None and self.head_warmup_steps < 0:
            raise ValueError(f"head_warmup_steps must be >= 0, got {self.head_warmup_steps}")
        rate = self.head_warmup_learning_rate
        if rate is not None and not rate > 0:
            raise ValueError(f"head_warmup_learning_rate must be a positive number, got {rate}")
        if self.calibration_tokens == "completion" and self.estimator not in FORWARD_ONLY_ESTIMATORS:
            raise ValueError(
                f"calibration_tokens completion applies to the activation and obd estimators; the {self.estimator} "
                "estimator's loss already counts only the completion"
            )
        if self.target_modules is not None and self.target_regex is not None:
            raise ValueError("give target_modules or target_regex, not both")
        if self.target_modules is not None and not self.target_modules:
            raise ValueError("target_modules must name at least one module")
        if self.device_map == "none" and (self.max_memory is not None or self.offload_folder is not None):
            raise ValueError("--max-memory and --offload-folder need --device-map auto")
        if self.device_map != "none" and self.estimator not in DEVICE_MAP_ESTIMATORS:
            raise ValueError(
                f"--device-map works with the {' and '.join(DEVICE_MAP_ESTIMATORS)} estimator only (forward passes "
                f"through offloaded layers); {self.estimator} needs gradients of every weight: load the model "
                "without --device-map"
            )
        if self.max_memory is not None:
            parse_max_memory(self.max_memory)
        if self.offload_folder is not None:
            check_offload_folder(self.offload_folder)
        if self.target_regex is not None:
            try:
                re.compile(self.target_regex)
            except (re.error, RecursionError, OverflowError) as error:
                raise ValueError(
                    f"target_regex {self.target_regex!r} is not a valid regular expression: {error}"
                ) from None

    @property
    def targets(self) -> str | list[str] | None:
        """The target layers as the core takes them: the regular expression, or the list of names."""
        return self.target_regex if self.target_regex is not None else self.target_modules


@dataclass
class AllocationOptions:
    """The rank budget (average rank, unit) and how theta becomes ranks (scheme, fusion, floor, caps)."""

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

    def validate(self) -> None:
        """Raise ValueError naming the first allocation option out of range, or a budget below its floor."""
        for name in ("avg_rank", "num_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
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
        if not self.metrics:
            raise ValueError(f"metrics must name at least one of {', '.join(METRIC_GROUPS)}")


@dataclass
class AdapterOptions:
    """The fine-tuning method and its adapter: given ranks (senslora), LoRA alpha, dropout."""

    method: str = option("senslora", "fine-tuning method", choices=METHODS)
    ranks: str | None = option(None, "use this ranks.json instead of computing sensitivity and allocation")
    lora_alpha: float | None = option(None, "LoRA alpha at the average rank (default: 2 x avg_rank)")
    alpha_mode: str = option("scale", "scale: alpha/r equal to uniform LoRA's; fixed: alpha fixed", choices=ALPHA_MODES)
    lora_dropout: float = option(0.05, "LoRA dropout")

    def validate(self) -> None:
        """Raise ValueError naming the first adapter option out of range."""
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must lie in [0, 1), got {self.lora_dropout}")
        if self.lora_alpha is not None and not (self.lora_alpha > 0 and math.isfinite(self.lora_alpha)):
            raise ValueError(f"lora_alpha must be a positive number, got {self.lora_alpha}")
        if self.ranks is not None and not get_method(self.method).uses_allocation:
            raise ValueError(f"ranks applies to method senslora only, not to method {self.method!r}")


@dataclass
class EvaluationOptions:
    """Generation-based evaluation of instruction tasks (scored on a few validation examples)."""

    max_generation_examples: int = option(32, "instruction tasks: validation examples scored by generation")
    max_new_tokens: int = option(64, "instruction tasks: tokens generated per example")

    def validate(self) -> None:
        """Raise ValueError naming the first evaluation option out of range."""
        if self.max_generation_examples < 0:
            raise ValueError(f"max_generation_examples must be >= 0, got {self.max_generation_examples}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class RunOptions:
    """Where the run is written, whether it replaces or continues one, and where it computes."""

    output_dir: str | None = option(None, "run directory (default: runs/<model>-<data>-<method>-r<rank>-s<seed>)")
    overwrite: bool = option(False, "replace an existing output: a finished run in output_dir, or the --output file")
    resume: bool = option(False, "continue an unfinished run in output_dir from its last checkpoint")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    progress: bool = option(True, "show progress bars")

    def validate(self) -> None:
        """Raise ValueError if overwrite and resume are both set, or the device is not one we can name."""
        if self.overwrite and self.resume:
            raise ValueError("--overwrite and --resume exclude each other")
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise ValueError(f"device {self.device!r} is not allowed; use auto, cpu, cuda, cuda:N or mps")


# The groups in the order their options are listed (by `senslora finetune --help` and in config.json).
OPTION_GROUPS: tuple[type, ...] = (
    DataOptions,
    CalibrationOptions,
    AllocationOptions,
    AdapterOptions,
    TrainingConfig,
    EvaluationOptions,
    RunOptions,
)
# Options every command that loads a model and data takes, wherever their group lists them.
COMMON_OPTIONS = ("seed", "device", "progress")


@dataclass
class RunConfig(
    RunOptions, EvaluationOptions, TrainingConfig, AdapterOptions, AllocationOptions, CalibrationOptions, DataOptions
):
    """Every option of `senslora sensitivity / allocate / finetune / evaluate`: all the groups together
    (bases listed last-group-first, so the fields keep OPTION_GROUPS' order)."""

    def validate(self) -> None:
        """Raise ValueError naming the first option with a value that is not allowed.

        Types and choices of every option first, then each group's ranges, then the checks between groups;
        nothing is loaded, so this runs before any expensive work.
        """
        check_field_values(self)
        for group in OPTION_GROUPS:
            group.validate(self)
        calibrates = get_method(self.method).uses_allocation and self.ranks is None
        if self.quantization != "none" and self.estimator not in QUANTIZED_ESTIMATORS and calibrates:
            raise ValueError(
                f"--quantization {self.quantization} works with the activation estimator only: {self.estimator} "
                "needs gradients of full-precision weights (compute ranks on an unquantized copy and pass --ranks)"
            )

    @property
    def alpha(self) -> float:
        """lora_alpha, defaulting to twice the average rank."""
        return self.lora_alpha if self.lora_alpha is not None else 2.0 * self.avg_rank

    @property
    def warmup_learning_rate(self) -> float:
        """The head warm-up's learning rate: head_warmup_learning_rate, defaulting to learning_rate."""
        rate = self.head_warmup_learning_rate
        return rate if rate is not None else self.learning_rate

    def training(self) -> TrainingConfig:
        """The training group on its own, as the engine takes it."""
        return TrainingConfig(**{item.name: getattr(self, item.name) for item in fields(TrainingConfig)})

    def run_dir(self) -> Path:
        """output_dir, or runs/<model>-<data>-<method>-r<avg_rank>-s<seed>."""
        if self.output_dir:
            return Path(self.output_dir)
        data_name = Path(self.data).stem if Path(self.data).suffix else self.data.replace("/", "_")
        model_name = Path(self.model).name or self.model
        return Path("runs") / f"{model_name}-{data_name}-{self.method}-r{self.avg_rank}-s{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
