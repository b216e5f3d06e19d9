"""The memory plan, from a config alone, against a hand computation and against really loaded models."""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig

import senslora.finetune.preparation as preparation
from senslora.finetune.memory_plan import check_plan_fits, empty_model, plan_memory
from senslora.finetune.model_loading import LoadSettings

# The tiny Llama of tests/conftest.py: vocab 100, hidden 32, MLP 48, 2 layers, 4 heads of 8, 2 KV heads.
TINY = {"vocab_size": 100, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2}
TINY |= {"num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64}
# By hand, per layer: q 32x32 + k 32x16 + v 32x16 + o 32x32 = 3,072; gate, up, down 3 x 32x48 = 4,608;
# two norms 2 x 32: 7,744 per layer, 15,488 for two, of which 15,360 in Linear weights. Embedding 100x32,
# head 32x100 (untied), final norm 32: 21,920 in all.
PARAMETERS, LINEAR_IN_LAYERS = 21_920, 15_360
# uniform LoRA at rank 4: per layer q (32+32) + k (32+16) + v (32+16) + o (32+32) + 3 x (32+48) = 464
ADAPTER_AT_RANK_4 = 4 * 2 * 464


def test_plan_matches_the_hand_count():
    model = empty_model(LlamaConfig(**TINY), "causal_lm")
    assert all(p.device.type == "meta" for p in model.parameters())  # no weights were made
    plan = plan_memory(model, LoadSettings(torch.float32), avg_rank=4)
    assert plan.parameters == PARAMETERS and plan.weight_bytes == 4 * PARAMETERS
    assert plan.adapter_parameters == ADAPTER_AT_RANK_4 and plan.training_bytes == 16 * ADAPTER_AT_RANK_4
    assert plan_memory(model, LoadSettings(torch.bfloat16), avg_rank=4).weight_bytes == 2 * PARAMETERS
    nf4 = plan_memory(model, LoadSettings(torch.float32, "nf4"), avg_rank=4)
    nf4_bits = 4 + 8 / 64 + 32 / (64 * 256)  # 4-bit codes, an 8-bit absmax per 64, a float32 per 256 blocks
    assert nf4.quantized_parameters == LINEAR_IN_LAYERS  # the head stays unquantized
    assert nf4.weight_bytes == round(LINEAR_IN_LAYERS * nf4_bits / 8 + (PARAMETERS - LINEAR_IN_LAYERS) * 4)


def test_tied_embeddings_count_once():
    tied = plan_memory(empty_model(LlamaConfig(**TINY, tie_word_embeddings=True), "causal_lm"), LoadSettings(), 4)
    assert tied.parameters == PARAMETERS - 100 * 32


def test_plan_is_within_a_few_percent_of_the_loaded_models_footprint(tiny_llama_dir):
    model = empty_model(LlamaConfig.from_pretrained(tiny_llama_dir), "causal_lm")
    full = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert plan_memory(model, LoadSettings(), 4).weight_bytes == pytest.approx(full.get_memory_footprint(), rel=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)
        nf4 = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, quantization_config=config, device_map={"": "cpu"})
    planned = plan_memory(model, LoadSettings(torch.float32, "nf4"), 4).weight_bytes
    assert planned == pytest.approx(nf4.get_memory_footprint(), rel=0.03)


def test_a_device_known_too_small_is_refused():
    plan = plan_memory(empty_model(LlamaConfig(**TINY), "causal_lm"), LoadSettings(), 4)
    check_plan_fits(plan, torch.device("cuda:0"), None, training=True)  # free memory unknown: no refusal
    check_plan_fits(plan, torch.device("cuda:0"), plan.weight_bytes, training=False)
    with pytest.raises(ValueError, match="cuda:0 has 87.7 KB free but the model needs at least 147.1 KB"):
        check_plan_fits(plan, torch.device("cuda:0"), plan.weight_bytes, training=True)


def test_commands_print_the_plan_and_refuse_before_loading(monkeypatch, tiny_llama_dir, tmp_path, capsys):
    from senslora.cli import main

    text = tmp_path / "t.txt"
    text.write_text("the movie was good and the plot was not bad\n" * 20)
    base = ["--model", str(tiny_llama_dir), "--data", str(text), "--max-length", "16", "--no-progress"]
    base += ["--calibration-examples", "4"]
    assert main(["sensitivity", *base, "--output", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("memory plan: 21,920 parameters, weights 87.7 KB (float32)")

    monkeypatch.setattr(preparation, "free_device_memory", lambda device: 50_000)  # a device too small
    loads = []
    monkeypatch.setattr(preparation, "load_model_and_tokenizer", lambda *a, **k: loads.append(a))
    code = main(["finetune", *base, "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "has 50.0 KB free but the model needs at least 147.1 KB" in err[0]
    assert not loads and not (tmp_path / "run").exists()
    # offloading lifts the refusal: the plan is printed, the model loads
    monkeypatch.undo()
    monkeypatch.setattr(preparation, "free_device_memory", lambda device: 50_000)
    code = main(["sensitivity", *base, "--device-map", "auto", "--output", str(tmp_path / "s2.json")])
    assert code == 0, capsys.readouterr().err
