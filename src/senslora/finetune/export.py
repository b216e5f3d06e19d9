"""`senslora export`: a ranks.json or a finished run, written for the tools people train and serve with.

    lora-config   a peft.LoraConfig as JSON (LoraConfig(**json.load(f)) rebuilds it)
    adapter-init  an untrained PEFT adapter directory on the base model (PeftModel.from_pretrained loads it;
                  any framework that takes an adapter directory trains it, e.g. LLaMA-Factory's
                  adapter_name_or_path)
    axolotl       an Axolotl YAML fragment with integer ranks and alphas (senslora.core.axolotl)
    peft-dir      a finished run's trained adapter; --bake-scale makes it serving-safe
                  (senslora.core.serving), --merge writes the merged full model instead

Everything is checked before anything is written, and every output is written atomically: a file through a
temporary file in the same directory, a directory through a temporary directory renamed into place.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from senslora.core.allocation_result import Allocation
from senslora.core.artifacts import RANKS_FILE, load_ranks_file, read_json_file
from senslora.core.axolotl import DEFAULT_MAX_SCALE_ERROR, axolotl_fragment
from senslora.core.peft_export import to_lora_config
from senslora.core.serving import ADAPTER_WEIGHTS, write_baked_adapter
from senslora.core.targets import HEAD_NAMES
from senslora.finetune.config import RunConfig
from senslora.finetune.config_file import load_config_file
from senslora.finetune.methods import TASK_TYPES
from senslora.finetune.run_files.run_directory import FINISHED_MARKER, sidecar
from senslora.utils.io import atomic_directory, atomic_write_text, check_output_path

FORMATS = ("lora-config", "adapter-init", "axolotl", "peft-dir")
DIRECTORY_FORMATS = ("adapter-init", "peft-dir")


@dataclass
class ExportSource:
    """What an export reads: the ranks, and for a run its directory, options and task."""

    path: Path
    allocation: Allocation | None
    config: RunConfig  # the run's options (defaults for a bare ranks.json)
    run_dir: Path | None = None
    task: str | None = None


@dataclass
class ExportOptions:
    """The export's own settings; None means: the run's value (or the default for a bare ranks.json)."""

    format: str
    out: Path
    model: str | None = None
    task: str | None = None
    lora_alpha: float | None = None
    alpha_mode: str | None = None
    lora_dropout: float | None = None
    bake_scale: bool = False
    merge: bool = False
    max_scale_error: float = DEFAULT_MAX_SCALE_ERROR


def read_source(path: str | Path) -> ExportSource:
    """A ranks.json, or a finished run directory (config.json, metrics.json, and ranks.json if it had ranks).

    Raises:
        ValueError: a missing path, an unfinished run (no metrics.json), or a damaged file.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"export source {str(path)!r} does not exist (give a ranks.json or a run directory)")
    if path.is_file():
        return ExportSource(path, load_ranks_file(path), RunConfig())
    if not (path / "config.json").is_file():
        raise ValueError(f"{str(path)!r} is not a run directory (no config.json) and not a ranks.json")
    if not (path / FINISHED_MARKER).is_file():
        raise ValueError(
            f"run {str(path)!r} did not finish (no {FINISHED_MARKER}); finish it with --resume, or export its "
            f"ranks from {str(path / RANKS_FILE)!r}"
        )
    values = load_config_file(path / "config.json")
    values.pop("trainer_arguments", None)
    config = RunConfig(**values)
    metrics = read_json_file(path / FINISHED_MARKER, "run metrics")
    allocation = load_ranks_file(path / RANKS_FILE) if (path / RANKS_FILE).is_file() else None
    task = metrics.get("task") if isinstance(metrics, dict) else None
    return ExportSource(path, allocation, config, run_dir=path, task=task)


def check_options(source: ExportSource, options: ExportOptions) -> None:
    """Raise ValueError for a combination that cannot be exported, before anything is loaded or written."""
    if options.format not in FORMATS:
        raise ValueError(f"unknown format {options.format!r}; allowed: {', '.join(FORMATS)}")
    if (options.bake_scale or options.merge) and options.format != "peft-dir":
        raise ValueError("--bake-scale and --merge apply to --format peft-dir only")
    if options.bake_scale and options.merge:
        raise ValueError("--bake-scale and --merge exclude each other (a merged model has no adapter to bake)")
    if options.format == "peft-dir":
        if source.run_dir is None:
            raise ValueError(f"--format peft-dir copies a finished run's adapter; {str(source.path)!r} is a file")
        if not (source.run_dir / "adapter" / ADAPTER_WEIGHTS).is_file():
            raise ValueError(f"run {str(source.run_dir)!r} has no adapter/{ADAPTER_WEIGHTS}")
    elif source.allocation is None:
        raise ValueError(
            f"run {str(source.path)!r} has no {RANKS_FILE} (a {source.config.method} run): nothing to export"
        )
    if options.task is not None and options.task not in TASK_TYPES:
        raise ValueError(f"unknown task {options.task!r}; allowed: {', '.join(TASK_TYPES)}")
    directory = options.format in DIRECTORY_FORMATS
    check_output_path(options.out, "--out", directory=directory)
    out = options.out
    if (out.is_dir() and any(out.iterdir())) or (out.is_file() and out.stat().st_size > 0):
        raise ValueError(f"--out {str(out)!r} already exists and is not empty; choose a new path")


def adapter_settings(source: ExportSource, options: ExportOptions) -> dict[str, Any]:
    """lora_alpha, alpha_mode, lora_dropout and task: the option given, else the run's, else the default.

    A bare ranks.json's lora_alpha defaults to twice its average rank, as a run's does.
    """
    config = source.config
    alpha = options.lora_alpha
    if alpha is None:
        alpha = config.alpha if source.run_dir is not None else 2.0 * source.allocation.avg_rank
    return {
        "lora_alpha": alpha,
        "alpha_mode": options.alpha_mode or config.alpha_mode,
        "lora_dropout": config.lora_dropout if options.lora_dropout is None else options.lora_dropout,
        "task": options.task or source.task,
    }


def lora_config_of(source: ExportSource, options: ExportOptions):
    """The peft.LoraConfig of the source's ranks with the export's settings."""
    settings = adapter_settings(source, options)
    task_type = TASK_TYPES.get(settings["task"]) if settings["task"] else None
    return to_lora_config(
        source.allocation,
        lora_alpha=settings["lora_alpha"],
        alpha_mode=settings["alpha_mode"],
        lora_dropout=settings["lora_dropout"],
        task_type=task_type,
    )


def lora_config_json(config) -> str:
    """A LoraConfig as the JSON PEFT writes to adapter_config.json (sets as sorted lists)."""
    document = config.to_dict()
    for key, value in document.items():
        if isinstance(value, set):
            document[key] = sorted(value)
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def export(source: ExportSource, options: ExportOptions) -> str:
    """Write the export; returns one line saying what was written.

    Raises:
        ValueError: see `check_options`, `senslora.core.axolotl.axolotl_fragment`, and for the formats that
            load the base model, a model that cannot be loaded or does not have the ranks' modules.
    """
    check_options(source, options)
    out = options.out
    if options.format == "lora-config":
        config = lora_config_of(source, options)
        atomic_write_text(out, lora_config_json(config))
        return f"LoraConfig of {len(config.rank_pattern)} modules -> {out}"
    if options.format == "axolotl":
        return _export_axolotl(source, options)
    if options.format == "adapter-init":
        return _export_adapter_init(source, options)
    return _export_peft_dir(source, options)


def _export_axolotl(source: ExportSource, options: ExportOptions) -> str:
    import yaml

    settings = adapter_settings(source, options)
    fragment = axolotl_fragment(
        source.allocation,
        lora_alpha=settings["lora_alpha"],
        alpha_mode=settings["alpha_mode"],
        lora_dropout=settings["lora_dropout"],
        max_scale_error=options.max_scale_error,
    )
    ranks = fragment.fields["lora_rank_pattern"].values()
    header = (
        f"# senslora ranks from {source.path}: {len(fragment.fields['lora_target_modules'])} modules, ranks "
        f"{min(ranks)}..{max(ranks)}; largest scale error from integer alphas: "
        f"{100 * fragment.largest_scale_error:.2f} %\n"
    )
    atomic_write_text(options.out, header + yaml.safe_dump(fragment.fields, sort_keys=False))
    error = (
        f"alphas rounded to integers, largest scale error {100 * fragment.largest_scale_error:.2f} % "
        f"({fragment.worst_module})"
        if fragment.largest_scale_error > 0
        else "every alpha exact"
    )
    return f"axolotl fragment, {len(ranks)} modules, {error} -> {options.out}"


def _load_base(source: ExportSource, options: ExportOptions, task: str | None, num_labels: int | None):
    """The base model (and tokenizer) the export needs: --model, else the run's model."""
    from senslora.finetune.models import encoder_model_type, load_model_and_tokenizer

    if options.model is None and source.run_dir is None:
        raise ValueError(f"--format {options.format} needs the base model: pass --model (a ranks.json names none)")
    model_name = options.model or source.config.model
    if task is None:  # a bare ranks.json: a causal LM for a decoder, a classifier for an encoder
        encoder = encoder_model_type(model_name, trust_remote_code=source.config.trust_remote_code)
        task = "classification" if encoder else "causal_lm"
    model, tokenizer = load_model_and_tokenizer(
        model_name, task, num_labels=num_labels, trust_remote_code=source.config.trust_remote_code
    )
    return model, tokenizer, task


def _export_adapter_init(source: ExportSource, options: ExportOptions) -> str:
    import torch
    from peft import get_peft_model

    from senslora.finetune.rank_steps import check_allocation_fits

    settings = adapter_settings(source, options)
    model, _, task = _load_base(source, options, settings["task"], None)
    check_allocation_fits(model, source.allocation, source.path)
    config = lora_config_of(source, replace(options, task=task))
    torch.manual_seed(source.config.seed)
    peft_model = get_peft_model(model, config)
    document = sidecar(source.allocation, None, None)

    def write(folder: Path) -> None:
        peft_model.save_pretrained(folder)
        (folder / "senslora.json").write_text(json.dumps(document, indent=2) + "\n")

    atomic_directory(options.out, write)
    return f"untrained adapter ({len(config.rank_pattern)} modules, {task}) -> {options.out}"


def head_labels(adapter_dir: Path) -> int | None:
    """The number of labels of the task head saved with an adapter (modules_to_save), None without one."""
    from safetensors import safe_open

    with safe_open(str(adapter_dir / ADAPTER_WEIGHTS), framework="pt") as weights:
        for key in weights.keys():  # noqa: SIM118
            parts = key.split(".")
            if "lora_" not in key and parts[-1] == "weight" and parts[-2] in HEAD_NAMES - {"pre_classifier"}:
                return int(weights.get_slice(key).get_shape()[0])
    return None


def _export_peft_dir(source: ExportSource, options: ExportOptions) -> str:
    adapter = source.run_dir / "adapter"
    if options.bake_scale:
        write_baked_adapter(adapter, options.out)
        return f"serving-safe adapter (scale baked into lora_B, one rank for every module) -> {options.out}"
    if not options.merge:
        atomic_directory(options.out, lambda folder: shutil.copytree(adapter, folder, dirs_exist_ok=True))
        return f"adapter of run {source.run_dir} -> {options.out}"
    from peft import PeftModel

    model, tokenizer, _ = _load_base(source, options, options.task or source.task, head_labels(adapter))
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()

    def write(folder: Path) -> None:
        merged.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    atomic_directory(options.out, write)
    return f"merged model (adapter folded into the base weights) -> {options.out}"
