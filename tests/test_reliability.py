"""Reliability: every bad input ends in one line and exit 2 before the expensive work, runs survive a hard
kill, numerical faults stop with exit 3 and keep the last good checkpoint, files are written atomically,
loading never unpickles untrusted data, and allocation, metrics and the activation estimator hold up on
random and extreme inputs.

The catalogue of inputs tested here is docs/reliability.md.
"""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import senslora.finetune.pipeline as pipeline
from senslora.cli import main
from senslora.core.allocation import DominanceWarning, allocate_ranks
from senslora.core.metrics import (
    ModuleSensitivity,
    effective_rank_metric,
    sensitivities_to_json,
    topk_metric,
    trace_metric,
)
from senslora.finetune.engine import last_checkpoint
from senslora.utils.io import (
    append_line,
    atomic_directory,
    atomic_write_json,
    atomic_write_text,
    recover_directory,
    truncate_log,
)

SOURCE = Path(__file__).resolve().parent.parent / "src" / "senslora"
FAST = ["--no-progress", "--epochs", "1", "--batch-size", "16", "--max-length", "32", "--calibration-examples", "32"]
TINY_BERT_MODULES = [
    f"bert.encoder.layer.{i}.{m}"
    for i in range(2)
    for m in (
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    )
] + ["bert.pooler.dense"]


def tiny_bert_shape(name: str, hidden: int = 32, intermediate: int = 64) -> tuple[int, int]:
    if name.endswith("intermediate.dense"):
        return hidden, intermediate
    if name.endswith(".output.dense") and "attention" not in name:
        return intermediate, hidden
    return hidden, hidden


def run_cli(args, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def stderr_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------------------
# Input files for the catalogue, built on demand
# ---------------------------------------------------------------------------------------------------------


def ranks_document(modules: list[str], shape_of) -> dict:
    sensitivities = {
        name: ModuleSensitivity(
            name, *shape_of(name), trace=1.0 + i, topk=0.5 + i, effective_rank=1 + i % 3, num_entries=8
        )
        for i, name in enumerate(modules)
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DominanceWarning)
        return allocate_ranks(sensitivities, avg_rank=2).to_dict()


def save_bert_adapter(directory: Path, *, layers: int = 2, hidden: int = 32, labels: int = 2) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=labels,
    )
    model = get_peft_model(
        BertForSequenceClassification(config), LoraConfig(r=2, target_modules=["query"], task_type="SEQ_CLS")
    )
    model.save_pretrained(directory)
    return directory


class Inputs:
    """Resolves `{name}` placeholders in argv to small files built in a temporary directory."""

    def __init__(self, tmp_path: Path, bert_dir: Path, csv: Path, tiny_llama, tiny_decoder_tokenizer) -> None:
        self.tmp, self.bert, self.csv = tmp_path, bert_dir, csv
        self.tiny_llama, self.tiny_decoder_tokenizer = tiny_llama, tiny_decoder_tokenizer  # factory fixtures

    def write(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def fake_checkpoint(self, run: Path, config: dict | None, *, complete: bool = True) -> Path:
        state_dir = run / "checkpoints" / "checkpoint-2" / "senslora"
        state_dir.mkdir(parents=True)
        (state_dir / "trainable.safetensors").write_bytes(b"")
        if complete:
            state = {"global_step": 2, "history": [], "best_epoch": None, "best_metrics": {}, "train_seconds": 0.0}
            (state_dir / "state.json").write_text(json.dumps(state))
            torch.save({"state": {}, "param_groups": []}, state_dir.parent / "optimizer.pt")
            torch.save({}, state_dir.parent / "scheduler.pt")
        if config is not None:
            (run / "config.json").write_text(json.dumps(config))
        return run

    def resolve(self, token: str) -> str:
        return re.sub(r"\{(\w+)\}", lambda match: str(self.build(match.group(1))), token)

    def build(self, name: str):
        t = self.tmp
        if name == "tmp":
            return t
        if name == "bert":
            return self.bert
        if name == "csv":
            return self.csv
        if name == "file":
            return self.write("plain.txt", "not a directory\n")
        if name == "emptydir":
            (t / "emptydir").mkdir(exist_ok=True)
            return t / "emptydir"
        if name == "badmodel":
            return self.write("badmodel/config.json", "{ not json").parent
        if name == "xlsx":
            return self.write("table.xlsx", "binary spreadsheet")
        if name == "empty_csv":
            return self.write("empty.csv", "")
        if name == "header_csv":
            return self.write("header.csv", "sentence,label\n")
        if name == "oneclass_csv":
            return self.write("oneclass.csv", "sentence,label\n" + "a good film,positive\n" * 20)
        if name == "badutf8_csv":
            path = t / "latin1.csv"
            path.write_bytes(b"sentence,label\n\xff\xfe bad bytes,1\nok,0\n")
            return path
        if name == "reviews_csv":  # the label under a name senslora does not guess
            return self.write("reviews.csv", "review,stars\n" + "a warm and funny film,5\ntwo hours lost,1\n" * 10)
        if name == "llama":  # a tiny Llama (rotary positions, max_position_embeddings 64) with its tokenizer
            directory = t / "tiny-llama"
            if not directory.exists():
                tokenizer, model = self.tiny_decoder_tokenizer(), self.tiny_llama()
                model.config.pad_token_id = tokenizer.pad_token_id
                model.save_pretrained(directory)
                tokenizer.save_pretrained(directory)
            return directory
        if name == "textlabels_csv":
            return self.write("textlabels.csv", "sentence,label\n" + "a good film,positive\nbad,negative\n" * 10)
        if name.startswith("cfg_"):
            texts = {
                "cfg_list": ("run.yaml", "- model\n- data\n"),
                "cfg_invalid": ("run.yaml", "avg_rank: [1, 2\n"),
                "cfg_unknown": ("run.yaml", "colour: blue\n"),
                "cfg_type": ("run.yaml", "avg_rank: four\n"),
                "cfg_bool": ("run.yaml", "overwrite: 3\n"),
                "cfg_range": ("run.yaml", "learning_rate: -1.0\n"),
                "cfg_json": ("run.json", "{"),
                "cfg_suffix": ("run.txt", "avg_rank: 4\n"),
                "cfg_binary": ("run.yaml", None),
                "cfg_owned": ("run.json", '{"num_train_epochs": 3}'),
                "cfg_owned_nested": ("run.yaml", "trainer_arguments:\n  learning_rate: 0.1\n"),
                "cfg_not_trainer_field": ("run.yaml", "trainer_arguments:\n  colour: blue\n"),
                "cfg_best_at_end": ("run.yaml", "load_best_model_at_end: true\n"),
                "cfg_trainer_list": ("run.yaml", "trainer_arguments: [1, 2]\n"),
            }
            file_name, text = texts[name]
            if text is None:
                path = t / name / file_name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"\xff\xfe\x00\x01")
                return path
            return self.write(f"{name}/{file_name}", text)
        if name == "ranks_invalid":
            return self.write("ranks_invalid.json", "{")
        if name == "ranks_sensitivity":
            item = ModuleSensitivity("a.b", 2, 2, 1.0, 1.0, 1, 2)
            return self.write("ranks_sensitivity.json", sensitivities_to_json({"a.b": item}))
        if name == "ranks_llama":
            names = [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
            return self.write("ranks_llama.json", json.dumps(ranks_document(names, lambda n: (32, 32))))
        if name == "ranks_wide":
            document = ranks_document(TINY_BERT_MODULES, lambda n: tiny_bert_shape(n, hidden=48))
            return self.write("ranks_wide.json", json.dumps(document))
        if name == "ranks_ok":
            return self.write("ranks_ok.json", json.dumps(ranks_document(TINY_BERT_MODULES, tiny_bert_shape)))
        if name == "sens_ok":
            items = {
                n: ModuleSensitivity(n, *tiny_bert_shape(n), 1.0 + i, 1.0, 2, 8)
                for i, n in enumerate(TINY_BERT_MODULES)
            }
            return self.write("sens_ok.json", sensitivities_to_json(items))
        if name == "sens_invalid":
            return self.write("sens_invalid.json", "[1, 2")
        if name == "sens_ranks":
            return self.write("sens_ranks.json", json.dumps(ranks_document(TINY_BERT_MODULES, tiny_bert_shape)))
        if name == "sens_empty":
            return self.write("sens_empty.json", json.dumps({"format": "senslora.sensitivity/1", "modules": []}))
        if name == "sens_nan":
            text = sensitivities_to_json({"a.b": ModuleSensitivity("a.b", 2, 2, 1.0, 1.0, 1, 2)})
            return self.write("sens_nan.json", text.replace('"trace": 1.0', '"trace": NaN'))
        if name == "sens_no_spectrum":
            text = sensitivities_to_json(
                {"a.b": ModuleSensitivity("a.b", 2, 2, 1.0, 1.0, 1, 2)}, {"estimator": "gradient_spectrum"}
            )
            return self.write("sens_no_spectrum.json", text)
        if name == "sens_bad_spectrum":
            item = ModuleSensitivity("a.b", 2, 2, 1.0, 1.0, 1, 2, spectrum=(1.0, 0.5))
            text = sensitivities_to_json({"a.b": item}, {"estimator": "gradient_spectrum"})
            return self.write("sens_bad_spectrum.json", text.replace("0.5", "-0.5"))
        if name == "adapter_ok":
            return save_bert_adapter(t / "adapter_ok") if not (t / "adapter_ok").exists() else t / "adapter_ok"
        if name == "adapter_deeper":
            return save_bert_adapter(t / "adapter_deeper", layers=3)
        if name == "adapter_wide":
            return save_bert_adapter(t / "adapter_wide", hidden=48)
        if name == "adapter_labels":
            return save_bert_adapter(t / "adapter_labels", labels=3)
        if name == "adapter_noconfig":
            directory = t / "adapter_noconfig"
            directory.mkdir()
            save_file({"x": torch.zeros(1)}, str(directory / "adapter_model.safetensors"))
            return directory
        if name == "adapter_badjson":
            directory = self.write("adapter_badjson/adapter_config.json", "{").parent
            save_file({"x": torch.zeros(1)}, str(directory / "adapter_model.safetensors"))
            return directory
        if name == "adapter_bin":
            directory = self.write("adapter_bin/adapter_config.json", json.dumps({"peft_type": "LORA"})).parent
            (directory / "adapter_model.bin").write_bytes(b"pickled weights")
            return directory
        if name == "adapter_causal":
            config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "target_modules": ["q_proj"]}
            directory = self.write("adapter_causal/adapter_config.json", json.dumps(config)).parent
            save_file({"x": torch.zeros(1)}, str(directory / "adapter_model.safetensors"))
            return directory
        if name == "run_finished":
            run = self.fake_checkpoint(t / "run_finished", None)
            (run / "metrics.json").write_text("{}")
            return run
        if name == "run_unfinished":
            return self.write("run_unfinished/config.json", "{}").parent
        if name == "run_nockpt":
            return self.write("run_nockpt/config.json", "{}").parent
        if name == "run_partial_ckpt":
            return self.fake_checkpoint(t / "run_partial", None, complete=False)
        if name == "run_changed":
            return self.fake_checkpoint(t / "run_changed", {"learning_rate": 0.5, "epochs": 1})
        if name == "foreign_dir":
            return self.write("home/notes.txt", "precious").parent
        if name == "existing_json":
            return self.write("existing.json", "{}")
        raise KeyError(name)


# (id, command, arguments, text the one stderr line must hold, stage). Stages: "parse" (argparse, SystemExit 2),
# "early" (before the model is loaded), "model" (after loading the model, before tokenization), "load" (the
# model loader itself refuses). finetune/sensitivity/evaluate rows get the tiny model, the CSV and an output
# location first; a row's own options come after them and win.
CATALOGUE = [
    # model
    (
        "model-missing",
        "finetune",
        ["--model", "/nonexistent/model"],
        "model path '/nonexistent/model' does not exist",
        "early",
    ),
    ("model-file", "finetune", ["--model", "{file}"], "is a file", "early"),
    ("model-no-config", "finetune", ["--model", "{emptydir}"], "has no config.json", "early"),
    ("model-empty", "finetune", ["--model", " "], "model must be a non-empty string", "early"),
    ("model-broken", "finetune", ["--model", "{badmodel}"], "cannot be loaded", "load"),
    (
        "max-length-beyond-positions",
        "finetune",
        ["--max-length", "500"],
        "max_length 500 exceeds the 128 positions",
        "model",
    ),
    (
        "max-length-beyond-rotary-positions",
        "finetune",
        ["--model", "{llama}", "--max-length", "100"],
        "max_length 100 exceeds the 64 positions",
        "model",
    ),
    (
        "encoder-without-label-column",
        "finetune",
        ["--data", "{reviews_csv}", "--text-column", "review"],
        "no label column: pass --label-column (available columns: review, stars)",
        "early",
    ),
    (
        "causal-lm-on-encoder",
        "finetune",
        ["--data", "{reviews_csv}", "--text-column", "review", "--task", "causal_lm"],
        "task causal_lm needs a decoder",
        "early",
    ),
    # data
    ("data-missing", "finetune", ["--data", "/nonexistent/train.csv"], "does not exist", "early"),
    ("data-directory", "finetune", ["--data", "{emptydir}"], "is not a file", "early"),
    ("data-empty-file", "finetune", ["--data", "{empty_csv}"], "is empty", "early"),
    ("data-header-only", "finetune", ["--data", "{header_csv}"], "holds no examples", "early"),
    ("data-one-class", "finetune", ["--data", "{oneclass_csv}"], "at least two classes", "early"),
    ("data-not-utf8", "finetune", ["--data", "{badutf8_csv}"], "cannot be read", "early"),
    ("data-unknown-format", "finetune", ["--data", "{xlsx}"], "cannot tell the format of data file", "early"),
    ("label-column-missing", "finetune", ["--label-column", "stars"], "'stars' not found", "early"),
    ("text-column-missing", "finetune", ["--text-column", "review"], "'review' not found", "early"),
    ("columns-same", "finetune", ["--text-column", "label", "--label-column", "label"], "both name column", "early"),
    ("text-is-default-label", "finetune", ["--text-column", "label"], "would be both the text and the label", "early"),
    ("text-column-empty", "finetune", ["--text-column", ""], "text_column must be a non-empty string", "early"),
    (
        "regression-text-labels",
        "finetune",
        ["--data", "{textlabels_csv}", "--task", "regression"],
        "must be numbers",
        "early",
    ),
    (
        "validation-file-missing",
        "finetune",
        ["--validation-data", "/nonexistent/dev.csv"],
        "'/nonexistent/dev.csv' is not an existing file",
        "early",
    ),
    (
        "calibration-file-missing",
        "finetune",
        ["--calibration-data", "/nonexistent/cal.csv"],
        "calibration data '/nonexistent/cal.csv': data file",
        "early",
    ),
    # task, method, choices
    ("task-unknown", "finetune", ["--task", "translation"], "invalid choice", "parse"),
    ("method-unknown", "finetune", ["--method", "dora"], "invalid choice", "parse"),
    ("estimator-unknown", "finetune", ["--estimator", "oracle"], "invalid choice", "parse"),
    ("metric-unknown", "allocate", ["{sens_ok}", "--metrics", "entropy"], "invalid choice", "parse"),
    (
        "ranks-with-lora",
        "finetune",
        ["--method", "lora", "--ranks", "{ranks_ok}"],
        "ranks applies to method senslora only",
        "early",
    ),
    ("integer-not-a-number", "finetune", ["--epochs", "two"], "argument --epochs: invalid int value", "parse"),
    ("float-not-a-number", "finetune", ["--learning-rate", "fast"], "invalid float value", "parse"),
    ("unknown-option", "finetune", ["--colour", "blue"], "unrecognized arguments", "parse"),
    # numeric ranges
    (
        "learning-rate-negative",
        "finetune",
        ["--learning-rate", "-1e-3"],
        "learning_rate must be a positive number",
        "early",
    ),
    ("learning-rate-nan", "finetune", ["--learning-rate", "nan"], "learning_rate must be a finite number", "early"),
    ("learning-rate-inf", "finetune", ["--learning-rate", "inf"], "learning_rate must be a finite number", "early"),
    ("weight-decay-minus-inf", "finetune", ["--weight-decay", "-inf"], "weight_decay must be a finite number", "early"),
    ("batch-size-zero", "finetune", ["--batch-size", "0"], "batch_size must be an integer >= 1", "early"),
    (
        "eval-batch-size-zero",
        "finetune",
        ["--eval-batch-size", "0"],
        "eval_batch_size must be an integer >= 1",
        "early",
    ),
    ("epochs-zero", "finetune", ["--epochs", "0"], "epochs must be an integer >= 1", "early"),
    ("warmup-ratio-1.5", "finetune", ["--warmup-ratio", "1.5"], "warmup_ratio must lie in [0, 1)", "early"),
    (
        "weight-decay-negative",
        "finetune",
        ["--weight-decay", "-0.1"],
        "weight_decay must be a finite number >= 0",
        "early",
    ),
    ("max-grad-norm-zero", "finetune", ["--max-grad-norm", "0"], "max_grad_norm must be a positive", "early"),
    (
        "accumulation-zero",
        "finetune",
        ["--gradient-accumulation-steps", "0"],
        "gradient_accumulation_steps must",
        "early",
    ),
    ("max-steps-zero", "finetune", ["--max-steps", "0"], "max_steps must be an integer >= 1", "early"),
    ("save-steps-zero", "finetune", ["--save-steps", "0"], "save_steps must be", "early"),
    ("eval-steps-zero", "finetune", ["--eval-steps", "0"], "eval_steps must be", "early"),
    ("early-stopping-patience-zero", "finetune", ["--early-stopping-patience", "0"], "patience must be", "early"),
    ("report-to-unknown", "finetune", ["--report-to", "slack"], "invalid choice", "parse"),
    ("report-to-none-and-more", "finetune", ["--report-to", "none", "tensorboard"], "excludes every", "early"),
    ("log-every-zero", "finetune", ["--log-every", "0"], "log_every must be an integer >= 1", "early"),
    ("lora-dropout-one", "finetune", ["--lora-dropout", "1"], "lora_dropout must lie in [0, 1)", "early"),
    ("lora-alpha-negative", "finetune", ["--lora-alpha", "-8"], "lora_alpha must be a positive number", "early"),
    ("avg-rank-zero", "finetune", ["--avg-rank", "0"], "avg_rank must be >= 1", "early"),
    ("avg-rank-huge", "finetune", ["--avg-rank", str(2**40)], "avg_rank must be an integer of at most", "early"),
    ("min-rank-negative", "finetune", ["--min-rank", "-1"], "min_rank must be >= 0", "early"),
    ("min-rank-above-average", "finetune", ["--avg-rank", "2", "--min-rank", "3"], "too small", "early"),
    ("max-rank-zero", "finetune", ["--max-rank", "0"], "max_rank must be >= max(1", "early"),
    ("max-rank-factor-tiny", "finetune", ["--max-rank-factor", "0.1"], "max_rank_factor must give a cap", "early"),
    ("topk-fraction-zero", "finetune", ["--topk-fraction", "0"], "topk_fraction must lie in (0, 1]", "early"),
    ("topk-fraction-above-one", "finetune", ["--topk-fraction", "1.5"], "topk_fraction must lie in (0, 1]", "early"),
    ("energy-threshold-zero", "finetune", ["--energy-threshold", "0"], "energy_threshold must lie in (0, 1]", "early"),
    (
        "calibration-examples-zero",
        "finetune",
        ["--calibration-examples", "0"],
        "calibration_examples must be >= 1",
        "early",
    ),
    (
        "calibration-batch-zero",
        "finetune",
        ["--calibration-batch-size", "0"],
        "calibration_batch_size must be",
        "early",
    ),
    ("num-probes-zero", "finetune", ["--num-probes", "0"], "num_probes must be >= 1", "early"),
    ("num-groups-zero", "finetune", ["--num-groups", "0"], "num_groups must be >= 1", "early"),
    # ranks above a matrix's full rank min(d_in, d_out) (32 for every target of the tiny BERT)
    ("allocate-above-full-rank", "allocate", ["{sens_ok}", "--avg-rank", "2000"], "modules' full ranks", "early"),
    ("avg-rank-above-full-rank", "finetune", ["--avg-rank", "100000"], "modules' full ranks", "model"),
    ("lora-rank-above-full-rank", "finetune", ["--method", "lora", "--avg-rank", "33"], "full rank 32", "model"),
    ("eva-rank-above-full-rank", "finetune", ["--method", "eva", "--avg-rank", "33"], "full rank 32", "model"),
    (
        "adalora-init-rank-above-full-rank",
        "finetune",
        ["--method", "adalora", "--avg-rank", "22"],
        "init_r 33",
        "model",
    ),
    ("head-warmup-negative", "finetune", ["--head-warmup-steps", "-5"], "head_warmup_steps must be >= 0", "early"),
    ("max-length-one", "finetune", ["--max-length", "1"], "max_length must be >= 2", "early"),
    ("max-train-examples-zero", "finetune", ["--max-train-examples", "0"], "max_train_examples must be >= 1", "early"),
    ("max-validation-zero", "finetune", ["--max-validation-examples", "0"], "max_validation_examples must", "early"),
    ("validation-fraction-one", "finetune", ["--validation-fraction", "1"], "validation_fraction must lie", "early"),
    ("seed-negative", "finetune", ["--seed", "-1"], "seed must lie in [0,", "early"),
    ("seed-huge", "finetune", ["--seed", str(2**35)], "seed must", "early"),
    ("max-new-tokens-zero", "finetune", ["--max-new-tokens", "0"], "max_new_tokens must be >= 1", "early"),
    (
        "generation-examples-negative",
        "finetune",
        ["--max-generation-examples", "-1"],
        "max_generation_examples",
        "early",
    ),
    # other strings and option pairs
    ("device-unknown", "finetune", ["--device", "tpu"], "device 'tpu' is not allowed", "early"),
    ("device-unavailable", "finetune", ["--device", "cuda:99"], "not available", "early"),
    ("target-regex-invalid", "finetune", ["--target-regex", "(query"], "target_regex '(query' is not a valid", "early"),
    ("targets-both", "finetune", ["--target-modules", "query", "--target-regex", "q.*"], "not both", "early"),
    ("target-modules-unknown", "finetune", ["--method", "lora", "--target-modules", "q_proj"], "q_proj", "model"),
    # config files
    (
        "config-missing",
        "finetune",
        ["--config", "/nonexistent/run.yaml"],
        "config file '/nonexistent/run.yaml'",
        "early",
    ),
    ("config-directory", "finetune", ["--config", "{emptydir}"], "is a directory", "early"),
    ("config-list", "finetune", ["--config", "{cfg_list}"], "must hold a mapping", "early"),
    ("config-invalid-yaml", "finetune", ["--config", "{cfg_invalid}"], "is not valid YAML", "early"),
    ("config-invalid-json", "finetune", ["--config", "{cfg_json}"], "is not valid JSON", "early"),
    ("config-unknown-key", "finetune", ["--config", "{cfg_unknown}"], "unknown option 'colour'", "early"),
    ("config-wrong-type", "finetune", ["--config", "{cfg_type}"], "'avg_rank' must be an integer", "early"),
    ("config-wrong-bool", "finetune", ["--config", "{cfg_bool}"], "'overwrite' must be true or false", "early"),
    ("config-out-of-range", "finetune", ["--config", "{cfg_range}"], "learning_rate must be a positive", "early"),
    ("config-suffix", "finetune", ["--config", "{cfg_suffix}"], "must end in .yaml, .yml or .json", "early"),
    ("config-not-text", "finetune", ["--config", "{cfg_binary}"], "cannot be read", "early"),
    ("config-trainer-owned", "finetune", ["--config", "{cfg_owned}"], "set by senslora: use --epochs", "early"),
    (
        "config-trainer-owned-nested",
        "finetune",
        ["--config", "{cfg_owned_nested}"],
        "'learning_rate' is set by senslora: use --learning-rate",
        "early",
    ),
    (
        "config-trainer-unknown-field",
        "finetune",
        ["--config", "{cfg_not_trainer_field}"],
        "'colour' is not a field of transformers.TrainingArguments",
        "early",
    ),
    ("config-trainer-best-at-end", "finetune", ["--config", "{cfg_best_at_end}"], "keeps the best adapter", "early"),
    ("config-trainer-not-mapping", "finetune", ["--config", "{cfg_trainer_list}"], "must be a mapping", "early"),
    # ranks files
    (
        "ranks-missing",
        "finetune",
        ["--ranks", "/nonexistent/ranks.json"],
        "ranks file '/nonexistent/ranks.json'",
        "early",
    ),
    ("ranks-invalid-json", "finetune", ["--ranks", "{ranks_invalid}"], "not valid JSON", "early"),
    ("ranks-other-format", "finetune", ["--ranks", "{ranks_sensitivity}"], "not a senslora ranks file", "early"),
    ("ranks-modules-missing", "finetune", ["--ranks", "{ranks_llama}"], "lacks, e.g. 'model.layers.0", "model"),
    ("ranks-other-shapes", "finetune", ["--ranks", "{ranks_wide}"], "(32, 32) here but (48, 48) in the file", "model"),
    # sensitivity files (allocate)
    ("sensitivity-missing", "allocate", ["/nonexistent/s.json"], "sensitivity file '/nonexistent/s.json'", "early"),
    ("sensitivity-invalid", "allocate", ["{sens_invalid}"], "not valid JSON", "early"),
    ("sensitivity-other-format", "allocate", ["{sens_ranks}"], "not a senslora sensitivity file", "early"),
    ("sensitivity-no-modules", "allocate", ["{sens_empty}"], "lists no modules", "early"),
    ("sensitivity-nan", "allocate", ["{sens_nan}"], "not finite", "early"),
    ("sensitivity-no-spectrum", "allocate", ["{sens_no_spectrum}"], "has no gradient spectrum", "early"),
    ("sensitivity-bad-spectrum", "allocate", ["{sens_bad_spectrum}"], "spectrum values must be finite", "early"),
    ("allocate-output-exists", "allocate", ["{sens_ok}", "--output", "{existing_json}"], "already exists", "early"),
    ("allocate-output-directory", "allocate", ["{sens_ok}", "--output", "{emptydir}"], "is a directory", "early"),
    ("allocate-output-under-file", "allocate", ["{sens_ok}", "--output", "{file}/r.json"], "which is a file", "early"),
    # adapters (evaluate)
    ("adapter-missing", "evaluate", ["--adapter", "/nonexistent/adapter"], "adapter '/nonexistent/adapter'", "early"),
    ("adapter-file", "evaluate", ["--adapter", "{file}"], "is a file, expected a directory", "early"),
    ("adapter-no-config", "evaluate", ["--adapter", "{adapter_noconfig}"], "adapter config", "early"),
    ("adapter-config-invalid", "evaluate", ["--adapter", "{adapter_badjson}"], "not valid JSON", "early"),
    ("adapter-pickle-only", "evaluate", ["--adapter", "{adapter_bin}"], "only safetensors weights are loaded", "early"),
    ("adapter-other-task", "evaluate", ["--adapter", "{adapter_causal}"], "task type CAUSAL_LM", "model"),
    ("adapter-other-model", "evaluate", ["--adapter", "{adapter_deeper}"], "'bert.encoder.layer.2", "model"),
    ("adapter-other-width", "evaluate", ["--adapter", "{adapter_wide}"], "does not fit this model", "model"),
    ("adapter-other-labels", "evaluate", ["--adapter", "{adapter_labels}"], "number of labels", "model"),
    (
        "evaluate-output-exists",
        "evaluate",
        ["--adapter", "{adapter_ok}", "--output", "{existing_json}"],
        "already exists",
        "early",
    ),
    # run directory and outputs
    ("resume-without-checkpoint", "finetune", ["--output-dir", "{run_nockpt}", "--resume"], "no checkpoint", "early"),
    (
        "resume-incomplete-checkpoint",
        "finetune",
        ["--output-dir", "{run_partial_ckpt}", "--resume"],
        "incomplete",
        "early",
    ),
    ("resume-finished-run", "finetune", ["--output-dir", "{run_finished}", "--resume"], "finished run", "early"),
    (
        "resume-other-options",
        "finetune",
        ["--output-dir", "{run_changed}", "--resume"],
        "learning_rate was 0.5",
        "early",
    ),
    ("overwrite-and-resume", "finetune", ["--overwrite", "--resume"], "exclude each other", "early"),
    ("unfinished-run", "finetune", ["--output-dir", "{run_unfinished}"], "--resume", "early"),
    (
        "overwrite-foreign-directory",
        "finetune",
        ["--output-dir", "{foreign_dir}", "--overwrite"],
        "holds no senslora run",
        "early",
    ),
    ("finished-run", "finetune", ["--output-dir", "{run_finished}"], "--overwrite", "early"),
    ("output-dir-is-file", "finetune", ["--output-dir", "{file}"], "is a file, expected a directory", "early"),
    ("output-dir-under-file", "finetune", ["--output-dir", "{file}/run"], "which is a file", "early"),
    ("sensitivity-output-exists", "sensitivity", ["--output", "{existing_json}"], "already exists", "early"),
    ("sensitivity-output-directory", "sensitivity", ["--output", "{emptydir}"], "is a directory", "early"),
    ("sensitivity-output-under-file", "sensitivity", ["--output", "{file}/s.json"], "which is a file", "early"),
]


def base_arguments(command: str, inputs: Inputs) -> list[str]:
    common = ["--model", str(inputs.bert), "--data", str(inputs.csv), "--no-progress"]
    if command == "finetune":
        return [*common, *FAST[1:], "--output-dir", str(inputs.tmp / "out")]
    if command == "sensitivity":
        return [*common, "--max-length", "32", "--calibration-examples", "32", "--output", str(inputs.tmp / "s.json")]
    if command == "evaluate":
        return [*common, "--max-length", "32", "--adapter", str(inputs.build("adapter_ok"))]
    return []


@pytest.mark.parametrize(
    ("command", "arguments", "expected", "stage"), [row[1:] for row in CATALOGUE], ids=[row[0] for row in CATALOGUE]
)
def test_bad_input_is_one_line_and_exit_2(
    command,
    arguments,
    expected,
    stage,
    tiny_bert_dir,
    sentiment_csv,
    tiny_llama,
    tiny_decoder_tokenizer,
    tmp_path,
    capsys,
    monkeypatch,
):
    inputs = Inputs(tmp_path, tiny_bert_dir, sentiment_csv, tiny_llama, tiny_decoder_tokenizer)
    argv = [command, *base_arguments(command, inputs), *[inputs.resolve(a) for a in arguments]]
    model_loads, tokenizations = [], []
    if stage in ("early", "parse"):

        def refuse_model(*args, **kwargs):
            model_loads.append(args)
            raise RuntimeError("the model must not be loaded for this input error")

        monkeypatch.setattr(pipeline, "load_model_and_tokenizer", refuse_model)
    if stage == "model":

        def refuse_tokenize(*args, **kwargs):
            tokenizations.append(args)
            raise RuntimeError("the data must not be tokenized before this input error")

        monkeypatch.setattr(pipeline, "tokenize_dataset", refuse_tokenize)
    if stage == "parse":
        with pytest.raises(SystemExit) as stop:
            main(argv)
        code, err = stop.value.code, capsys.readouterr().err
    else:
        code, _, err = run_cli(argv, capsys)
    assert code == 2, err
    lines = stderr_lines(err)
    assert len(lines) == 1, err
    assert expected in lines[0] and "Traceback" not in err
    assert not model_loads and not tokenizations
    assert not (tmp_path / "out").exists()  # no run directory is left behind


def test_catalogue_document_lists_every_tested_input():
    """docs/reliability.md holds one table row per catalogue entry, with the same exit code."""
    text = (SOURCE.parent.parent / "docs" / "reliability.md").read_text()
    section = text.split("## Catalogue", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([\w.-]+)` \| (\w+) \|.*\| (\d) \| [^|]+ \|$", section, flags=re.MULTILINE)
    assert sorted(rows) == sorted((row[0], row[1], "2") for row in CATALOGUE)


def test_config_file_cannot_run_code(tiny_bert_dir, sentiment_csv, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    config = tmp_path / "evil.yaml"
    config.write_text(f"model: !!python/object/apply:os.system ['touch {marker}']\n")
    code, _, err = run_cli(["finetune", "--config", config, "--output-dir", tmp_path / "out"], capsys)
    assert code == 2 and "is not valid YAML" in err and len(stderr_lines(err)) == 1
    assert not marker.exists()


def test_yaml_exponent_without_dot_is_a_number(tmp_path):
    """YAML 1.1 reads `1e-3` as a string; the config loader still takes it as the number it means."""
    from senslora.finetune.config import RunConfig, load_config_file

    path = tmp_path / "run.yaml"
    path.write_text("learning_rate: 1e-3\nweight_decay: 0\n")
    values = load_config_file(path)
    assert values == {"learning_rate": 0.001, "weight_decay": 0.0}
    RunConfig(**values).validate()


def test_python_api_rejects_wrong_types():
    from senslora.finetune.config import RunConfig

    for values, message in [
        ({"avg_rank": 2.5}, "avg_rank must be an integer"),
        ({"learning_rate": "fast"}, "learning_rate must be a number"),
        ({"overwrite": "yes"}, "overwrite must be true or false"),
        ({"target_modules": "query"}, "target_modules must be a list"),
        ({"model": None}, "model must not be empty"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            RunConfig(**values).validate()


# ---------------------------------------------------------------------------------------------------------
# Interrupted runs: kill -9 after a checkpoint, resume, compare with an uninterrupted run
# ---------------------------------------------------------------------------------------------------------

SLOW_TRAINING = """
import sys, time
import senslora.finetune.training as training
check = training._check_gradients
def slow_check(model, step):
    time.sleep(0.3)
    check(model, step)
training._check_gradients = slow_check
from senslora.cli import main
sys.exit(main(sys.argv[1:]))
"""


def read_state(run_dir: Path) -> dict | None:
    """The senslora state of the newest complete checkpoint (None while there is none)."""
    try:
        last = last_checkpoint(run_dir)
        return json.loads((last / "senslora" / "state.json").read_text()) if last else None
    except (OSError, ValueError):
        return None  # not written yet, or being replaced right now


def log_records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_killed_run_resumes_to_the_uninterrupted_result(tiny_bert_dir, sentiment_csv, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    # 160 rows -> 144 train (16 carved for validation) -> 9 steps per epoch, 27 in all.
    options = ["--model", tiny_bert_dir, "--data", sentiment_csv, "--no-progress", "--epochs", "3"]
    options += ["--batch-size", "16", "--max-length", "32", "--calibration-examples", "32", "--seed", "3"]
    options += ["--save-steps", "2", "--log-every", "5"]
    killed = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with (tmp_path / "stdout.txt").open("w") as out, (tmp_path / "stderr.txt").open("w") as err:
        process = subprocess.Popen(
            [sys.executable, "-c", SLOW_TRAINING, "finetune", *map(str, options), "--output-dir", str(killed)],
            stdout=out,
            stderr=err,
            env=env,
            cwd=tmp_path,
        )
        try:
            deadline = time.monotonic() + 240
            state = None
            while time.monotonic() < deadline and process.poll() is None:
                state = read_state(killed)
                if state and state["global_step"] >= 12:
                    break
                time.sleep(0.05)
            assert process.poll() is None, (tmp_path / "stderr.txt").read_text()
            process.send_signal(signal.SIGKILL)
        finally:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
    assert state is not None and state["global_step"] % 2 == 0
    final_state = read_state(killed)
    # The checkpoint is mid-epoch (9 steps per epoch, one checkpoint every 2 steps and at each epoch's end).
    assert 9 < final_state["global_step"] < 18 and final_state["global_step"] % 2 == 0
    assert not (killed / "metrics.json").exists()

    # The best adapter so far (epoch 1) survived the kill whole and loads with stock PEFT.
    assert final_state["best_epoch"] == 1
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2)
    PeftModel.from_pretrained(base, killed / "adapter")
    assert all(torch.isfinite(t).all() for t in load_file(killed / "adapter" / "adapter_model.safetensors").values())

    # A torn last log line (a kill mid-write) must be dropped on resume.
    with (killed / "log.jsonl").open("a") as stream:
        stream.write('{"step": 99, "lo')
    code, _, err = run_cli(["finetune", *options, "--output-dir", killed, "--resume"], capsys)
    assert code == 0, err

    straight = tmp_path / "straight"
    code, _, err = run_cli(["finetune", *options, "--output-dir", straight], capsys)
    assert code == 0, err

    resumed_weights = load_file(killed / "adapter" / "adapter_model.safetensors")
    straight_weights = load_file(straight / "adapter" / "adapter_model.safetensors")
    assert resumed_weights.keys() == straight_weights.keys()
    for name in straight_weights:
        torch.testing.assert_close(resumed_weights[name], straight_weights[name], atol=1e-6, rtol=1e-6)
    resumed, reference = (json.loads((d / "metrics.json").read_text()) for d in (killed, straight))
    assert resumed["best_epoch"] == reference["best_epoch"] and resumed["global_step"] == reference["global_step"] == 27
    assert resumed["validation"] == pytest.approx(reference["validation"], abs=1e-6)
    assert resumed["history"] == pytest.approx(reference["history"], abs=1e-6)
    assert resumed["sensitivity_seconds"] > 0  # restored from the run's sensitivity.json
    sidecar = json.loads((killed / "adapter" / "senslora.json").read_text())
    assert len(sidecar["sensitivity"]["modules"]) == 13
    # The log reads as if the run had never stopped: same records, no torn or repeated line.
    resumed_log, reference_log = log_records(killed), log_records(straight)
    assert [r["step"] for r in resumed_log] == [r["step"] for r in reference_log]
    assert resumed_log == pytest.approx(reference_log, abs=1e-6)


@pytest.mark.parametrize(("method", "stop_at"), [("adalora", 8), ("lora", 5)])
def test_interrupted_run_resumes_exactly(method, stop_at, tiny_bert_dir, sentiment_csv, tmp_path, capsys, monkeypatch):
    """Ctrl-C (exit 130) mid-epoch, then --resume: the same adapter as without the interruption. For AdaLoRA
    the checkpoint must carry its importance scores (the interruption falls inside its allocation phase);
    for LoRA with gradient accumulation the checkpoint falls between accumulation groups."""
    import senslora.finetune.training as training

    options = ["--model", tiny_bert_dir, "--data", sentiment_csv, "--method", method, *FAST]
    options += ["--batch-size", "8", "--save-steps", "3", "--log-every", "2"]
    if method == "lora":
        options += ["--gradient-accumulation-steps", "2", "--epochs", "2"]
    check = training._check_gradients

    def interrupt(model, step):
        if step == stop_at:
            raise KeyboardInterrupt
        check(model, step)

    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(training, "_check_gradients", interrupt)
        code, _, err = run_cli(["finetune", *options, "--output-dir", run_dir], capsys)
    assert code == 130 and "--resume" in err and len(stderr_lines(err)) == 1
    assert read_state(run_dir)["global_step"] == 3 * ((stop_at - 1) // 3)
    assert run_cli(["finetune", *options, "--output-dir", run_dir, "--resume"], capsys)[0] == 0
    straight = tmp_path / "straight"
    assert run_cli(["finetune", *options, "--output-dir", straight], capsys)[0] == 0
    resumed_weights = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    straight_weights = load_file(straight / "adapter" / "adapter_model.safetensors")
    assert resumed_weights.keys() == straight_weights.keys()
    for name in straight_weights:
        torch.testing.assert_close(resumed_weights[name], straight_weights[name], atol=1e-6, rtol=1e-6)
    resumed, reference = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, straight))
    assert resumed["validation"] == pytest.approx(reference["validation"], abs=1e-6)
    assert log_records(run_dir) == pytest.approx(log_records(straight), abs=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Numerical faults: exit 3, step and module named, last good checkpoint kept, no metrics.json
# ---------------------------------------------------------------------------------------------------------


def check_kept_checkpoint(run_dir: Path, step: int) -> None:
    last = run_dir / "checkpoints" / f"checkpoint-{step}"
    assert last_checkpoint(run_dir) == last
    state = json.loads((last / "senslora" / "state.json").read_text())
    assert state["global_step"] == step
    weights = load_file(last / "senslora" / "trainable.safetensors")
    assert weights and all(torch.isfinite(t).all() for t in weights.values())
    optimizer = torch.load(last / "optimizer.pt", weights_only=True)
    assert optimizer["state"]
    assert not (run_dir / "metrics.json").exists()


def test_huge_learning_rate_stops_with_exit_3(tiny_bert_dir, sentiment_csv, tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = ["finetune", "--model", tiny_bert_dir, "--data", sentiment_csv, "--output-dir", run_dir, *FAST]
    code, _, err = run_cli([*args, "--learning-rate", "1e30", "--save-steps", "1"], capsys)
    assert code == 3, err
    lines = stderr_lines(err)
    assert len(lines) == 1 and "Traceback" not in err
    match = re.search(r"training diverged: non-finite (loss \(nan\)|gradient|weight).* at step (\d+)", lines[0])
    assert match, lines[0]
    step = int(match.group(2))
    assert f"the last good checkpoint (step {step - 1}) is kept" in lines[0]
    check_kept_checkpoint(run_dir, step - 1)


def inject_into_peft_model(monkeypatch, inject):
    """Call `inject(peft_model)` right after the pipeline builds the model to be trained."""
    build = pipeline.build_peft_model

    def build_and_inject(*args, **kwargs):
        model = build(*args, **kwargs)
        inject(model)
        return model

    monkeypatch.setattr(pipeline, "build_peft_model", build_and_inject)


def test_nan_gradient_names_step_and_parameter_and_run_resumes(
    tiny_bert_dir, sentiment_csv, tmp_path, capsys, monkeypatch
):
    target = "base_model.model.bert.encoder.layer.1.attention.self.value.lora_B.default.weight"
    backward_calls = []

    def inject(model):
        parameter = dict(model.named_parameters())[target]

        def poison(gradient):
            backward_calls.append(1)
            return gradient * float("nan") if len(backward_calls) == 3 else gradient

        parameter.register_hook(poison)

    run_dir = tmp_path / "run"
    args = ["finetune", "--model", tiny_bert_dir, "--data", sentiment_csv, "--output-dir", run_dir, *FAST]
    args += ["--save-steps", "1"]
    with monkeypatch.context() as patch:
        inject_into_peft_model(patch, inject)
        code, _, err = run_cli(args, capsys)
    assert code == 3, err
    line = stderr_lines(err)
    assert len(line) == 1
    assert f"non-finite gradient at step 3 in {target!r}" in line[0]
    assert "the last good checkpoint (step 2) is kept" in line[0]
    check_kept_checkpoint(run_dir, 2)
    # The kept checkpoint is good: the run continues from it to the end.
    code, _, err = run_cli([*args, "--resume"], capsys)
    assert code == 0, err
    assert json.loads((run_dir / "metrics.json").read_text())["global_step"] == 9


def test_nan_loss_names_the_first_module_with_non_finite_output(
    tiny_bert_dir, sentiment_csv, tmp_path, capsys, monkeypatch
):
    source = "bert.encoder.layer.1.intermediate.intermediate_act_fn"
    calls = []

    def inject(model):
        def poison(module, inputs, output):
            calls.append(1)
            return output * float("nan") if len(calls) >= 2 else output

        model.get_submodule("base_model.model." + source).register_forward_hook(poison)

    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch:
        inject_into_peft_model(patch, inject)
        code, _, err = run_cli(
            ["finetune", "--model", tiny_bert_dir, "--data", sentiment_csv, "--output-dir", run_dir, *FAST], capsys
        )
    assert code == 3, err
    line = stderr_lines(err)
    assert len(line) == 1
    assert (
        "non-finite loss (nan) at step 2" in line[0]
        and f"first non-finite output in 'base_model.model.{source}'" in line[0]
    )
    assert "no checkpoint had been written yet" in line[0]
    assert not (run_dir / "metrics.json").exists()


# ---------------------------------------------------------------------------------------------------------
# Atomic writes and the append-only log
# ---------------------------------------------------------------------------------------------------------


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "result.json"
    atomic_write_json(target, {"old": True})

    def crash(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        atomic_write_text(target, '{"new": tru')
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_failed_directory_write_keeps_the_old_directory(tmp_path):
    target = tmp_path / "adapter"
    atomic_directory(target, lambda d: (d / "weights").write_text("old"))

    def half_written(directory: Path) -> None:
        (directory / "weights").write_text("ne")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_directory(target, half_written)
    assert (target / "weights").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_crash_between_the_two_renames_is_recovered(tmp_path):
    target = tmp_path / "adapter"
    atomic_directory(target, lambda d: (d / "weights").write_text("old"))
    os.replace(target, tmp_path / ".adapter.old")  # the state right after the first rename
    assert recover_directory(target)
    assert (target / "weights").read_text() == "old"
    assert not recover_directory(target)
    atomic_directory(target, lambda d: (d / "weights").write_text("new"))
    assert (target / "weights").read_text() == "new" and not (tmp_path / ".adapter.old").exists()


def test_log_is_cut_to_the_checkpoint_and_to_whole_lines(tmp_path):
    log = tmp_path / "log.jsonl"
    append_line(log, '{"step": 1}')
    size = log.stat().st_size
    append_line(log, '{"step": 2}')
    with log.open("a") as stream:
        stream.write('{"step": 3, "lo')
    assert truncate_log(log) == 2 * size and log.read_text() == '{"step": 1}\n{"step": 2}\n'
    assert truncate_log(log, size) == size and log.read_text() == '{"step": 1}\n'
    assert truncate_log(log, size + 3) == size  # a size inside a line falls back to the line start
    assert truncate_log(tmp_path / "absent.jsonl", 10) == 0 and (tmp_path / "absent.jsonl").read_text() == ""
    with pytest.raises(ValueError, match="newline"):
        append_line(log, "two\nlines")


def module_trees() -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text(), filename=str(path))) for path in sorted(SOURCE.rglob("*.py"))]


def call_name(node: ast.Call) -> str:
    function = node.func
    if isinstance(function, ast.Name):
        return function.id
    if isinstance(function, ast.Attribute):
        owner = function.value.id if isinstance(function.value, ast.Name) else ""
        return f"{owner}.{function.attr}" if owner else f".{function.attr}"
    return ""


WRITER_METHODS = {"write_text", "write_bytes", "save_pretrained", "to_csv", "to_json", "savefig"}
WRITER_FUNCTIONS = {"torch.save", "save_file", "json.dump", "np.save", "shutil.copy", "shutil.copyfile"}


def is_write_open(node: ast.Call) -> bool:
    """open(path, mode), gzip/bz2.open(path, mode) or path.open(mode) with a writing mode."""
    name = call_name(node)
    if name in ("open", "gzip.open", "bz2.open", "lzma.open", "io.open"):
        modes = node.args[1:2]
    elif name.endswith(".open"):
        modes = node.args[:1]
    else:
        return False
    modes = [*modes, *[k.value for k in node.keywords if k.arg == "mode"]]
    return any(isinstance(m, ast.Constant) and isinstance(m.value, str) and set(m.value) & set("wax+") for m in modes)


def unguarded_writes(path: Path, tree: ast.Module) -> list[str]:
    """Calls that write a file outside a callback handed to atomic_directory (which fills a temporary dir)."""
    callbacks = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and call_name(node).endswith("atomic_directory"):
            for argument in [*node.args[1:], *[k.value for k in node.keywords if k.arg == "write"]]:
                if isinstance(argument, ast.Name):
                    callbacks.add(argument.id)
    found = []

    def visit(node: ast.AST, enclosing: list[str]) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            enclosing = [*enclosing, node.name]
        writes = isinstance(node, ast.Call) and (
            call_name(node) in WRITER_FUNCTIONS
            or call_name(node).rsplit(".", 1)[-1] in WRITER_METHODS
            or is_write_open(node)
        )
        if writes and not set(enclosing) & callbacks:
            found.append(f"{path.name}:{node.lineno} {call_name(node)}")
        for child in ast.iter_child_nodes(node):
            visit(child, enclosing)

    visit(tree, [])
    return found


def test_every_writer_goes_through_senslora_io():
    """Outside io.py a file is written only inside a callback that fills an atomic_directory."""
    offenders = [item for path, tree in module_trees() if path.name != "io.py" for item in unguarded_writes(path, tree)]
    assert not offenders, offenders
    # The check itself sees plain writes, and lets a write into an atomic_directory callback pass.
    sample = [
        "def f(p):",
        "    p.write_text('x')",
        "    open(p, 'w')",
        "    p.open('a')",
        "    torch.save(x, p)",
        "    p.open('r')",
        "def g(d):",
        "    save_file(x, d)",
        "atomic_directory(t, g)",
    ]
    found = unguarded_writes(Path("x.py"), ast.parse("\n".join(sample)))
    assert found == ["x.py:2 p.write_text", "x.py:3 open", "x.py:4 p.open", "x.py:5 torch.save"]


# ---------------------------------------------------------------------------------------------------------
# Safe loading
# ---------------------------------------------------------------------------------------------------------


PICKLE_MODULES = {"pickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}


def unsafe_loads(where: str, tree: ast.Module) -> list[str]:
    """Pickle-like imports, torch.load without weights_only=True, eval/exec, unsafe YAML, trust_remote_code=True."""
    problems = []
    for node in ast.walk(tree):
        at = f"{where}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            if PICKLE_MODULES & {str(n).split(".")[0] for n in names}:
                problems.append(f"{at} imports a pickle-like module")
        if not isinstance(node, ast.Call):
            continue
        name = call_name(node)
        keywords = {k.arg: k.value for k in node.keywords}
        constant = {k: v.value for k, v in keywords.items() if isinstance(v, ast.Constant)}
        if name == "torch.load" and constant.get("weights_only") is not True:
            problems.append(f"{at} torch.load without weights_only=True")
        if name in ("eval", "exec", "compile", "__import__"):
            problems.append(f"{at} calls {name}")
        if name.startswith("yaml.") and name != "yaml.safe_load":
            problems.append(f"{at} uses {name} (only yaml.safe_load is safe)")
        if constant.get("trust_remote_code"):
            problems.append(f"{at} hard-codes trust_remote_code=True")
    return problems


def test_source_loads_nothing_unsafely():
    problems = [item for path, tree in module_trees() for item in unsafe_loads(path.name, tree)]
    assert not problems, problems
    # The check itself sees each unsafe form.
    unsafe = ["import pickle", "torch.load(f)", "eval(x)", "yaml.load(t)", "f(trust_remote_code=True)"]
    unsafe.append("torch.load(f, weights_only=False)")
    assert len(unsafe_loads("x.py", ast.parse("\n".join(unsafe)))) == 6


def test_trust_remote_code_only_with_the_flag(tiny_bert_dir, sentiment_csv, tmp_path, capsys, monkeypatch):
    import inspect

    from senslora.finetune.config import RunConfig
    from senslora.finetune.models import load_model_and_tokenizer

    assert RunConfig().trust_remote_code is False
    assert inspect.signature(load_model_and_tokenizer).parameters["trust_remote_code"].default is False
    seen = []

    def record(*args, **kwargs):
        seen.append(kwargs["trust_remote_code"])
        raise ValueError("stop here")

    monkeypatch.setattr(pipeline, "load_model_and_tokenizer", record)
    args = ["finetune", "--model", tiny_bert_dir, "--data", sentiment_csv, "--no-progress"]
    assert run_cli([*args, "--output-dir", tmp_path / "a"], capsys)[0] == 2
    assert run_cli([*args, "--output-dir", tmp_path / "b", "--trust-remote-code"], capsys)[0] == 2
    assert seen == [False, True]


class RunsCode:
    """An object whose unpickling would create a file (what a malicious checkpoint would do)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_checkpoint_with_pickled_code_is_refused_and_not_run(tmp_path):
    """A checkpoint whose optimizer.pt would run code when unpickled is refused before the Trainer loads it."""
    from senslora.finetune.engine import check_resumable

    model = torch.nn.Linear(3, 2)
    checkpoint = tmp_path / "checkpoints" / "checkpoint-4"
    (checkpoint / "senslora").mkdir(parents=True)
    save_file(
        {n: p.detach().clone() for n, p in model.named_parameters()},
        str(checkpoint / "senslora" / "trainable.safetensors"),
    )
    state = {"global_step": 4, "history": [], "best_epoch": None, "best_metrics": {}, "train_seconds": 0.0}
    (checkpoint / "senslora" / "state.json").write_text(json.dumps(state))
    marker = tmp_path / "code-ran"
    torch.save({"state": RunsCode(str(marker)), "param_groups": []}, checkpoint / "optimizer.pt")
    torch.save({}, checkpoint / "scheduler.pt")
    with pytest.raises(ValueError, match=r"cannot be restored \(optimizer.pt\)"):
        check_resumable(tmp_path)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------------
# Property-based: allocation and metrics at extreme magnitudes, zeros, ties, one module
# ---------------------------------------------------------------------------------------------------------


def sensitivity_set(traces, topks, ranks) -> dict[str, ModuleSensitivity]:
    return {
        f"m{i:02d}": ModuleSensitivity(f"m{i:02d}", 64, 64, float(t), float(k), int(r), 8)  # full rank 64
        for i, (t, k, r) in enumerate(zip(traces, topks, ranks, strict=True))
    }


def allocate_quietly(sensitivities, **options):
    """allocate_ranks in the paper's settings (a budget in ranks, no cap) unless told otherwise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DominanceWarning)
        return allocate_ranks(sensitivities, **({"budget_unit": "rank", "max_rank_factor": 0} | options))


scores = st.lists(st.floats(min_value=0.01, max_value=100.0), min_size=2, max_size=12)


@settings(max_examples=200, deadline=None)
@given(
    scores,
    st.sampled_from([1e-150, 1e-100, 1e-30, 1e-6, 1e6, 1e30, 1e100, 1e150]),
    st.integers(1, 8),
    st.sampled_from(["sra", "pra"]),
)
def test_allocation_is_scale_free_over_large_magnitudes(values, scale, avg_rank, scheme):
    """theta weighs each metric by c(S) = std/mean^2, so c(kS) kS = c(S) S: rescaling a metric changes nothing."""
    count = len(values)
    ranks = [i % 3 for i in range(count)]
    plain = allocate_quietly(sensitivity_set(values, values[::-1], ranks), avg_rank=avg_rank, scheme=scheme)
    scaled = sensitivity_set([v * scale for v in values], [v * scale for v in values[::-1]], ranks)
    assert allocate_quietly(scaled, avg_rank=avg_rank, scheme=scheme).ranks == plain.ranks


@pytest.mark.parametrize("scale", [1e-300, 1e300])
def test_allocation_is_scale_free_at_the_float_limits(scale):
    values = [1.0, 4.0, 9.0, 16.0, 25.0]
    ranks = [0, 1, 2, 0, 1]
    plain = allocate_quietly(sensitivity_set(values, values[::-1], ranks), avg_rank=4)
    scaled = sensitivity_set([v * scale for v in values], [v * scale for v in values[::-1]], ranks)
    assert allocate_quietly(scaled, avg_rank=4).ranks == plain.ranks


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 12), st.integers(1, 8), st.sampled_from([0.0, 1e-300, 5.0, 1e150]))
def test_all_equal_or_zero_metrics_give_uniform_ranks(count, avg_rank, value):
    """Ties everywhere (including all zeros): no metric is informative, so every module gets avg_rank."""
    allocation = allocate_quietly(sensitivity_set([value] * count, [value] * count, [0] * count), avg_rank=avg_rank)
    assert allocation.uniform_fallback
    assert allocation.ranks == {f"m{i:02d}": avg_rank for i in range(count)}


def test_pra_is_uniform_when_no_metric_is_informative():
    allocation = allocate_quietly(sensitivity_set([0.0, 0.0], [0.0, 0.0], [0, 0]), avg_rank=2, scheme="pra")
    assert allocation.ranks == {"m00": 2, "m01": 2}


@settings(max_examples=100, deadline=None)
@given(st.floats(min_value=0.0, max_value=1e300), st.integers(1, 64), st.integers(0, 2))
def test_a_single_module_takes_the_whole_budget(value, avg_rank, min_rank):
    allocation = allocate_quietly(
        sensitivity_set([value], [value], [1]), avg_rank=avg_rank, min_rank=min(min_rank, avg_rank)
    )
    assert allocation.ranks == {"m00": avg_rank} and allocation.budget_used == avg_rank


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=2, max_size=10), st.integers(1, 6))
def test_tied_modules_get_ranks_within_one_and_sorted_by_name(groups, avg_rank):
    """Modules with identical metrics differ by at most one rank, and the extra ranks go to the earlier names."""
    values = [float(g) for g in groups]
    allocation = allocate_quietly(sensitivity_set(values, values, [1] * len(values)), avg_rank=avg_rank)
    assert sum(allocation.ranks.values()) == avg_rank * len(values)
    for value in set(values):
        tied = [allocation.ranks[f"m{i:02d}"] for i, v in enumerate(values) if v == value]
        assert max(tied) - min(tied) <= 1
        assert tied == sorted(tied, reverse=True)


diagonals = st.lists(
    st.one_of(st.just(0.0), st.floats(min_value=1e-300, max_value=1e300), st.sampled_from([1e-300, 1.0, 1e300])),
    min_size=1,
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(diagonals, st.floats(0.01, 1.0), st.floats(0.01, 1.0))
def test_metrics_hold_for_extreme_zero_and_tied_diagonals(values, fraction, alpha):
    """Against sorted() and math.fsum on exactly the same numbers: finite results, the definitions hold."""
    import math

    ordered = sorted(values, reverse=True)
    k = min(len(values), max(1, math.floor(len(values) * fraction)))
    total = math.fsum(ordered)
    if math.isinf(total):
        return  # the sum itself exceeds the float range: no finite trace exists
    assert trace_metric(values) == pytest.approx(total, rel=1e-12)
    assert topk_metric(values, fraction) == pytest.approx(math.fsum(ordered[:k]) / k, rel=1e-12)
    count = effective_rank_metric(values, alpha)
    if total == 0:
        assert count == 0
        return
    assert 1 <= count <= len(values)
    assert math.fsum(ordered[:count]) >= alpha * total * (1 - 1e-9)
    assert count == 1 or math.fsum(ordered[: count - 1]) < alpha * total * (1 + 1e-9)
    # Ties: the metrics do not depend on the order of equal (or any) entries.
    assert effective_rank_metric(values[::-1], alpha) == count


# ---------------------------------------------------------------------------------------------------------
# Property-based: the activation estimator over random BERT shapes and padding patterns
# ---------------------------------------------------------------------------------------------------------


@st.composite
def bert_and_batches(draw):
    heads = draw(st.sampled_from([1, 2, 4]))
    head_size = draw(st.sampled_from([2, 4, 8]))
    shape = {
        "hidden": heads * head_size,
        "heads": heads,
        "intermediate": draw(st.integers(3, 40)),
        "layers": draw(st.integers(1, 2)),
        "seed": draw(st.integers(0, 1000)),
    }
    batches = []
    for _ in range(draw(st.integers(1, 3))):
        size, length = draw(st.integers(1, 4)), draw(st.integers(2, 9))
        mask_rows = []
        for _ in range(size):
            pattern = draw(st.sampled_from(["right", "left", "holes"]))
            keep = draw(st.integers(1, length))
            if pattern == "right":
                row = [1] * keep + [0] * (length - keep)
            elif pattern == "left":
                row = [0] * (length - keep) + [1] * keep
            else:
                row = draw(st.lists(st.integers(0, 1), min_size=length, max_size=length))
                row[draw(st.integers(0, length - 1))] = 1  # at least one real token
            mask_rows.append(row)
        ids = draw(st.lists(st.integers(1, 99), min_size=size * length, max_size=size * length))
        batches.append((torch.tensor(ids).reshape(size, length), torch.tensor(mask_rows)))
    return shape, batches


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(bert_and_batches())
def test_activation_diagonals_match_a_hand_computation(example):
    """h = (2/N) sum_n x_n^2 over non-padding tokens, from each Linear's input captured by a separate hook."""
    from transformers import BertConfig, BertForSequenceClassification

    from senslora.core.estimators import activation_diagonals
    from senslora.core.targets import find_target_layers

    shape, raw_batches = example
    torch.manual_seed(shape["seed"])
    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=100,
            hidden_size=shape["hidden"],
            num_hidden_layers=shape["layers"],
            num_attention_heads=shape["heads"],
            intermediate_size=shape["intermediate"],
            max_position_embeddings=16,
        )
    ).eval()
    batches = [{"input_ids": ids * mask, "attention_mask": mask} for ids, mask in raw_batches]
    layers = find_target_layers(model)
    estimated = activation_diagonals(model, layers, batches, progress=False)

    sums = {layer.name: torch.zeros(layer.d_in, dtype=torch.float64) for layer in layers}
    rows = dict.fromkeys(sums, 0)
    current_mask = {}

    def capture(name, module, inputs):
        x = inputs[0].detach().double()
        if x.dim() == 3:  # (batch, tokens, d_in): keep the real tokens only
            x = x[current_mask["mask"].bool()]
        sums[name] += (x**2).sum(0)
        rows[name] += x.shape[0]

    handles = [layer.module.register_forward_pre_hook(lambda m, i, n=layer.name: capture(n, m, i)) for layer in layers]
    with torch.no_grad():
        for batch in batches:
            current_mask["mask"] = batch["attention_mask"]
            model(**batch)
    for handle in handles:
        handle.remove()
    assert set(estimated) == set(sums)
    real_tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    examples = sum(int(b["attention_mask"].shape[0]) for b in batches)
    for name, total in sums.items():
        assert rows[name] == (examples if name.endswith("pooler.dense") else real_tokens)
        torch.testing.assert_close(estimated[name], 2.0 * total / rows[name], rtol=1e-5, atol=1e-9)
    assert np.all([torch.isfinite(v).all() for v in estimated.values()])


def test_atomic_writes_get_the_modes_plain_writes_would(tmp_path):
    """Files and directories written atomically get 0666 / 0777 less the umask, like open() and mkdir()."""
    from senslora.utils.io import atomic_directory, atomic_write_text

    previous = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "file.json", "{}")
        atomic_directory(tmp_path / "adapter", lambda directory: (directory / "weights").write_text("w"))
        (tmp_path / "plain_dir").mkdir()
        (tmp_path / "plain_file").write_text("")
    finally:
        os.umask(previous)

    def mode(name: str) -> int:
        return (tmp_path / name).stat().st_mode & 0o777

    assert mode("file.json") == mode("plain_file") == 0o640
    assert mode("adapter") == mode("plain_dir") == 0o750
