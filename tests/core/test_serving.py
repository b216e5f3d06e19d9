"""Serving-safe baking: delta W kept for every module, stock PEFT outputs kept, and the two simpler readers
(one global lora_alpha / r as vLLM reads it; lora_alpha / the tensor's own rank as llama.cpp reads it) right
on the baked adapter where they are wrong on the original."""

from __future__ import annotations

import json
import math

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file

from senslora import to_lora_config
from senslora.core.serving import write_baked_adapter

PREFIX = "base_model.model."


def _ranks(model) -> dict[str, int]:
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n]
    return {name: [1, 2, 3, 4][i % 4] for i, name in enumerate(names)}  # mean 33 / 14, not an integer


def _save_adapter(model, ranks, path, *, alpha_mode="scale", use_rslora=False):
    config = to_lora_config(ranks, lora_alpha=6, alpha_mode=alpha_mode, use_rslora=use_rslora, init_lora_weights=False)
    torch.manual_seed(1)
    peft_model = get_peft_model(model, config)  # init_lora_weights=False: lora_B random, so delta W != 0
    peft_model.save_pretrained(path)
    return peft_model


def _pairs(path):
    tensors = load_file(str(path / "adapter_model.safetensors"))
    config = json.loads((path / "adapter_config.json").read_text())
    names = [k.removeprefix(PREFIX).removesuffix(".lora_A.weight") for k in tensors if k.endswith(".lora_A.weight")]
    pairs = {n: (tensors[f"{PREFIX}{n}.lora_A.weight"], tensors[f"{PREFIX}{n}.lora_B.weight"]) for n in names}
    return config, pairs


def _true_scale(ranks, name, alpha_mode, use_rslora):
    """By hand: scale mode keeps lora_alpha / avg_rank (rsLoRA: / sqrt(avg_rank)); fixed gives lora_alpha / r."""
    avg = sum(ranks.values()) / len(ranks)
    if alpha_mode == "scale":
        return 6 / (math.sqrt(avg) if use_rslora else avg)
    return 6 / (math.sqrt(ranks[name]) if use_rslora else ranks[name])


def _vllm_delta(config, lora_a, lora_b):
    """One scale for every module from the global lora_alpha and r; rank_pattern / alpha_pattern ignored."""
    scale = config["lora_alpha"] / (math.sqrt(config["r"]) if config.get("use_rslora") else config["r"])
    return scale * lora_b.double() @ lora_a.double()


def _llama_cpp_delta(config, lora_a, lora_b):
    """One lora_alpha, divided by the tensor's own rank (lora_A's first dimension)."""
    return config["lora_alpha"] / lora_a.shape[0] * lora_b.double() @ lora_a.double()


@pytest.mark.parametrize(("alpha_mode", "use_rslora"), [("scale", False), ("scale", True), ("fixed", False)])
def test_baked_delta_w_equals_the_original_for_every_module(tiny_llama, tmp_path, alpha_mode, use_rslora):
    model = tiny_llama()
    ranks = _ranks(model)
    _save_adapter(model, ranks, tmp_path / "original", alpha_mode=alpha_mode, use_rslora=use_rslora)
    write_baked_adapter(tmp_path / "original", tmp_path / "baked")
    _, original = _pairs(tmp_path / "original")
    baked_config, baked = _pairs(tmp_path / "baked")
    assert set(baked) == set(ranks)
    assert baked_config["r"] == baked_config["lora_alpha"] == 4 and not baked_config["rank_pattern"]
    for name, (lora_a, lora_b) in original.items():
        assert lora_a.shape[0] == ranks[name]
        reference = _true_scale(ranks, name, alpha_mode, use_rslora) * lora_b.double() @ lora_a.double()
        assert reference.abs().max() > 0
        new_a, new_b = baked[name]
        delta = baked_config["lora_alpha"] / baked_config["r"] * new_b.double() @ new_a.double()
        torch.testing.assert_close(delta, reference, rtol=1e-5, atol=1e-7)


def test_baked_adapter_gives_the_original_outputs_through_stock_peft(tiny_llama, tmp_path):
    _save_adapter(tiny_llama(), _ranks(tiny_llama()), tmp_path / "original")
    write_baked_adapter(tmp_path / "original", tmp_path / "baked")
    input_ids = torch.randint(1, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        bare = tiny_llama()(input_ids).logits
        original = PeftModel.from_pretrained(tiny_llama(), tmp_path / "original").eval()(input_ids).logits
        baked = PeftModel.from_pretrained(tiny_llama(), tmp_path / "baked").eval()(input_ids).logits
    assert (original - bare).abs().max() > 1e-3  # the adapter changes the outputs
    torch.testing.assert_close(baked, original, rtol=1e-5, atol=1e-5)


def test_single_scale_readers_are_wrong_on_the_original_and_right_on_the_baked_adapter(tiny_llama, tmp_path):
    model = tiny_llama()
    ranks = _ranks(model)
    _save_adapter(model, ranks, tmp_path / "original")
    write_baked_adapter(tmp_path / "original", tmp_path / "baked")
    config, original = _pairs(tmp_path / "original")
    baked_config, baked = _pairs(tmp_path / "baked")
    for reader in (_vllm_delta, _llama_cpp_delta):
        wrong = 0
        for name, (lora_a, lora_b) in original.items():
            reference = _true_scale(ranks, name, "scale", False) * lora_b.double() @ lora_a.double()
            if not torch.allclose(reader(config, lora_a, lora_b), reference, rtol=1e-3):
                wrong += 1
            torch.testing.assert_close(reader(baked_config, *baked[name]), reference, rtol=1e-5, atol=1e-7)
        # vLLM's one scale lora_alpha / round(avg_rank) is wrong everywhere (avg 33/14 is not 2); llama.cpp's
        # lora_alpha / r_m is wrong on every module, since no rank equals the average
        assert wrong == len(original), reader.__name__


def test_dora_and_other_adapters_are_refused():
    from senslora.core.serving import bake_scale

    with pytest.raises(ValueError, match="DoRA"):
        bake_scale({"peft_type": "LORA", "use_dora": True, "lora_alpha": 8, "r": 4}, {})
    with pytest.raises(ValueError, match="only LoRA"):
        bake_scale({"peft_type": "ADALORA"}, {})
