"""Every bad input ends in one line and exit 2 before the expensive work, and no run directory is left.

The catalogue of inputs tested here is docs/reliability.md; one test checks that its table lists exactly the
cases run here.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import senslora.finetune.pipeline as pipeline
import senslora.finetune.preparation as preparation
from senslora.cli import main
from senslora.core.allocation import DominanceWarning, allocate_ranks
from senslora.core.metrics import ModuleSensitivity, sensitivities_to_json

ROOT = Path(__file__).resolve().parents[2]
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
        "test-file-missing",
        "finetune",
        ["--test-data", "/nonexistent/test.csv"],
        "test_split '/nonexistent/test.csv' is not an existing file",
        "early",
    ),
    (
        "test-data-without-test-split",
        "finetune",
        ["--test-data", "{reviews_csv}", "--test-examples", "0"],
        "test_examples is 0",
        "early",
    ),
    ("test-examples-negative", "finetune", ["--test-examples", "-1"], "test_examples must be >= 0", "early"),
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
    (
        "calibration-tokens-completion-loss-estimator",
        "finetune",
        ["--calibration-tokens", "completion", "--estimator", "fisher"],
        "calibration_tokens completion applies to the activation and obd estimators",
        "early",
    ),
    (
        "calibration-tokens-completion-no-instruction",
        "sensitivity",
        ["--calibration-tokens", "completion"],
        "calibration_tokens completion needs instruction data",
        "early",
    ),
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
    ("report-avg-rank-beyond-float", "report", ["{sens_ok}", "--avg-rank", "7.49e306"], "(0, 2147483647]", "parse"),
    ("report-avg-rank-nan", "report", ["{sens_ok}", "--avg-rank", "nan"], "(0, 2147483647]", "parse"),
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
    # model loading: dtype, quantization, device map (docs/reliability.md)
    (
        "model-dtype-fp16-cpu",
        "sensitivity",
        ["--model-dtype", "float16", "--device", "cpu"],
        "float16 cannot run",
        "early",
    ),
    ("model-dtype-unknown", "finetune", ["--model-dtype", "fp8"], "invalid choice: 'fp8'", "parse"),
    (
        "quantization-loss-estimator",
        "sensitivity",
        ["--quantization", "nf4", "--estimator", "fisher"],
        "works with the activation estimator only",
        "early",
    ),
    (
        "device-map-loss-estimator",
        "sensitivity",
        ["--device-map", "auto", "--estimator", "hutchinson"],
        "--device-map works with the activation estimator only",
        "early",
    ),
    (
        "offload-folder-not-writable",
        "sensitivity",
        ["--device-map", "auto", "--offload-folder", "{file}/offload"],
        "plain.txt/offload' is not a directory",
        "early",
    ),
    (
        "max-memory-malformed",
        "sensitivity",
        ["--device-map", "auto", "--max-memory", "cpu:1GB"],
        "DEVICE=SIZE",
        "early",
    ),
    ("max-memory-no-unit", "sensitivity", ["--device-map", "auto", "--max-memory", "cpu=200"], "with a unit", "early"),
    ("max-memory-without-device-map", "sensitivity", ["--max-memory", "cpu=1GB"], "need --device-map auto", "early"),
    ("device-map-finetune", "finetune", ["--device-map", "auto"], "applies to `senslora sensitivity` only", "early"),
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
    run_cli,
    stderr_lines,
    monkeypatch,
):
    inputs = Inputs(tmp_path, tiny_bert_dir, sentiment_csv, tiny_llama, tiny_decoder_tokenizer)
    argv = [command, *base_arguments(command, inputs), *[inputs.resolve(a) for a in arguments]]
    model_loads, tokenizations = [], []
    if stage in ("early", "parse"):

        def refuse_model(*args, **kwargs):
            model_loads.append(args)
            raise RuntimeError("the model must not be loaded for this input error")

        monkeypatch.setattr(preparation, "load_model_and_tokenizer", refuse_model)
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
        code, _, err = run_cli(argv)
    assert code == 2, err
    lines = stderr_lines(err)
    assert len(lines) == 1, err
    assert expected in lines[0] and "Traceback" not in err
    assert not model_loads and not tokenizations
    assert not (tmp_path / "out").exists()  # no run directory is left behind


def test_catalogue_document_lists_every_tested_input():
    """docs/reliability.md holds one table row per catalogue entry, with the same exit code."""
    text = (ROOT / "docs" / "reliability.md").read_text()
    section = text.split("## Catalogue", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([\w.-]+)` \| (\w+) \|.*\| (\d) \| [^|]+ \|$", section, flags=re.MULTILINE)
    assert sorted(rows) == sorted((row[0], row[1], "2") for row in CATALOGUE)
