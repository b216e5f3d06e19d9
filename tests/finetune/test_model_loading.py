"""Model loading options: dtype resolution, quantization configs, max_memory parsing, refusals before loading."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from transformers import LlamaConfig

import senslora.finetune.preparation as preparation
from senslora.finetune.config import RunConfig
from senslora.finetune.model_loading import (
    LoadSettings,
    check_bitsandbytes,
    check_offload_folder,
    parse_max_memory,
    parse_memory_size,
    quantization_config,
    resolve_dtype,
)


def test_auto_dtype_is_float32_on_the_cpu_and_the_checkpoints_own_on_an_accelerator():
    bf16_checkpoint = LlamaConfig(dtype="bfloat16")
    assert resolve_dtype("auto", torch.device("cpu"), bf16_checkpoint) is torch.float32
    assert resolve_dtype("auto", torch.device("cuda"), bf16_checkpoint) is torch.bfloat16
    assert resolve_dtype("auto", torch.device("cuda"), LlamaConfig(dtype="float16")) is torch.float16
    assert resolve_dtype("auto", torch.device("cuda"), None) is torch.float32  # no dtype recorded
    assert resolve_dtype("bfloat16", torch.device("cpu"), None) is torch.bfloat16
    assert resolve_dtype("float16", torch.device("cuda"), None) is torch.float16


def test_float16_on_the_cpu_is_refused():
    with pytest.raises(ValueError, match="float16 cannot run on the CPU"):
        resolve_dtype("float16", torch.device("cpu"), None)


def test_memory_sizes_parse_to_bytes_by_hand():
    assert parse_memory_size("200MB") == 200 * 1000**2
    assert parse_memory_size("1.5GiB") == 3 * 2**29
    assert parse_memory_size("64 kib") == 65536
    assert parse_max_memory("cuda:0=20GiB, 1=10GB,cpu=30GiB,disk=1TB") == {
        0: 20 * 2**30,
        1: 10 * 10**9,
        "cpu": 30 * 2**30,
        "disk": 10**12,
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cpu", "DEVICE=SIZE"),
        ("gpu=1GB", "DEVICE=SIZE"),
        ("cpu=1GB,cpu=2GB", "names device 'cpu' twice"),
        ("cpu=12", "not a number with a unit"),
        ("cpu=-1GB", "not a number with a unit"),
        ("cpu=0.1B", "at least 1 byte"),
    ],
)
def test_bad_max_memory_is_named(text, message):
    with pytest.raises(ValueError, match=message):
        parse_max_memory(text)


def test_quantization_configs_are_qlora_nf4_and_llm_int8():
    nf4 = quantization_config("nf4", torch.bfloat16)
    assert (nf4.load_in_4bit, nf4.bnb_4bit_quant_type, nf4.bnb_4bit_use_double_quant) == (True, "nf4", True)
    assert nf4.bnb_4bit_compute_dtype is torch.bfloat16
    int8 = quantization_config("int8", torch.float32, keep_unquantized=("classifier",))
    assert int8.load_in_8bit and int8.llm_int8_skip_modules == ["classifier"]
    options = LoadSettings(torch.float32, "nf4", {"": "cpu"}).from_pretrained_options()
    assert options["device_map"] == {"": "cpu"} and options["quantization_config"].load_in_4bit


def test_missing_bitsandbytes_is_one_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name))
    check_bitsandbytes("none")  # not needed unquantized
    with pytest.raises(ValueError, match="--quantization nf4 needs bitsandbytes: pip install bitsandbytes"):
        check_bitsandbytes("nf4")


def test_missing_bitsandbytes_stops_the_command_before_loading(
    monkeypatch, run_cli_here, tiny_llama_dir, tmp_path, stderr_lines
):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name))
    loads = []
    monkeypatch.setattr(preparation, "load_model_and_tokenizer", lambda *a, **k: loads.append(a))
    text = tmp_path / "t.txt"
    text.write_text("the movie was good\n" * 20)
    code, _, err = run_cli_here(["sensitivity", "--model", tiny_llama_dir, "--data", text, "--quantization", "int8"])
    assert code == 2 and stderr_lines(err) == [
        "senslora sensitivity: error: --quantization int8 needs bitsandbytes: pip install bitsandbytes"
    ]
    assert not loads


def test_offload_folder_checks_leave_nothing_behind(tmp_path):
    check_offload_folder(str(tmp_path / "new" / "offload"))  # creatable: fine, and not created yet
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is not a directory"):
        check_offload_folder(str(tmp_path / "file" / "offload"))


def test_quantized_sensitivity_needs_the_activation_estimator_unless_ranks_are_given():
    with pytest.raises(ValueError, match="activation estimator only"):
        RunConfig(quantization="nf4", estimator="fisher").validate()
    RunConfig(quantization="nf4", estimator="fisher", ranks="ranks.json").validate()  # no sensitivity pass
    RunConfig(quantization="nf4", estimator="fisher", method="lora").validate()


@pytest.fixture
def run_cli_here(capsys):
    from senslora.cli import main

    def run(args):
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def stderr_lines():
    return lambda err: [line for line in err.splitlines() if line.strip()]
