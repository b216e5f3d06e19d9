"""PEFT export: ranks read back from the model, outputs unchanged at init, stock reload reproduces logits."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer

from senslora import allocate_ranks, estimate_sensitivity, to_lora_config


def lora_ranks(model) -> dict[str, int]:
    """Rank of every LoRA layer read from the live PEFT model, keyed by the base model's module name."""
    result = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and "default" in module.r:
            result[name.removeprefix("base_model.model.")] = module.r["default"]
    return result


def lora_scalings(model) -> dict[str, float]:
    return {
        name.removeprefix("base_model.model."): module.scaling["default"]
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer) and "default" in module.scaling
    }


@pytest.fixture
def allocation(tiny_bert, token_batches):
    model = tiny_bert()
    sensitivities = estimate_sensitivity(model, token_batches(), progress=False)
    return allocate_ranks(sensitivities, avg_rank=4, min_rank=1)


def test_ranks_and_scales_read_back(allocation, tiny_bert):
    assert len(set(allocation.ranks.values())) > 1  # a real non-uniform allocation
    model = get_peft_model(tiny_bert(), to_lora_config(allocation, lora_alpha=8, task_type="SEQ_CLS"))
    assert lora_ranks(model) == allocation.ranks
    scalings = lora_scalings(model)
    assert all(scale == pytest.approx(8 / 4) for scale in scalings.values())  # alpha/r = uniform's alpha/avg
    fixed = get_peft_model(tiny_bert(), to_lora_config(allocation, lora_alpha=8, alpha_mode="fixed"))
    for name, scale in lora_scalings(fixed).items():
        assert scale == pytest.approx(8 / allocation.ranks[name])
    trainable = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert trainable == allocation.param_count


@pytest.mark.parametrize(
    ("alpha_mode", "use_rslora", "expected"),
    [
        ("scale", True, {1: 8 / 4**0.5, 7: 8 / 4**0.5}),  # uniform rsLoRA at the average rank 4: alpha/sqrt(4)
        ("fixed", True, {1: 8 / 1**0.5, 7: 8 / 7**0.5}),  # alpha kept: rsLoRA's alpha/sqrt(r) per module
        ("scale", False, {1: 8 / 4, 7: 8 / 4}),  # uniform LoRA at the average rank 4: alpha/4
        ("fixed", False, {1: 8 / 1, 7: 8 / 7}),
    ],
)
def test_scales_peft_reports_with_and_without_rslora(alpha_mode, use_rslora, expected, tiny_bert):
    ranks = {"bert.encoder.layer.0.attention.self.query": 1, "bert.encoder.layer.1.attention.self.query": 7}
    config = to_lora_config(ranks, lora_alpha=8, alpha_mode=alpha_mode, use_rslora=use_rslora)
    scalings = lora_scalings(get_peft_model(tiny_bert(), config))
    assert scalings == {name: pytest.approx(expected[rank]) for name, rank in ranks.items()}


def test_rank_zero_modules_are_left_out(tiny_bert):
    ranks = {"bert.encoder.layer.0.attention.self.query": 3, "bert.encoder.layer.1.attention.self.query": 0}
    model = get_peft_model(tiny_bert(), to_lora_config(ranks, lora_alpha=4))
    assert lora_ranks(model) == {"bert.encoder.layer.0.attention.self.query": 3}
    with pytest.raises(ValueError, match="rank 0"):
        to_lora_config({"a": 0}, lora_alpha=4)
    with pytest.raises(ValueError, match="alpha_mode"):
        to_lora_config(ranks, lora_alpha=4, alpha_mode="other")


def test_outputs_unchanged_at_init(allocation, tiny_bert, token_batches):
    base = tiny_bert()
    batch = token_batches(count=1)[0]
    with torch.no_grad():
        expected = base(**batch).logits
        peft_model = get_peft_model(tiny_bert(), to_lora_config(allocation, lora_alpha=8))
        torch.testing.assert_close(peft_model(**batch).logits, expected)


def test_stock_reload_gives_same_ranks_and_logits(allocation, tmp_path, tiny_bert, token_batches):
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    tiny_bert().save_pretrained(base_dir)
    from transformers import AutoModelForSequenceClassification

    model = get_peft_model(
        AutoModelForSequenceClassification.from_pretrained(base_dir),
        to_lora_config(allocation, lora_alpha=8, task_type="SEQ_CLS"),
    )
    torch.manual_seed(1)
    with torch.no_grad():  # make the adapter non-trivial, as after training
        for name, parameter in model.named_parameters():
            if "lora_B" in name or "classifier" in name:
                parameter.normal_(0, 0.5)
    model.eval()
    batch = token_batches(count=1)[0]
    with torch.no_grad():
        expected = model(**batch).logits
    model.save_pretrained(adapter_dir)
    fresh = AutoModelForSequenceClassification.from_pretrained(base_dir)
    reloaded = PeftModel.from_pretrained(fresh, adapter_dir).eval()
    assert lora_ranks(reloaded) == allocation.ranks
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, expected)
    assert not torch.allclose(expected, tiny_bert()(**batch).logits)  # the adapter does change the output


def test_gpt2_conv1d_targets_export(tiny_gpt2, token_batches):
    model = tiny_gpt2()
    sensitivities = estimate_sensitivity(model, token_batches(), progress=False)
    allocation = allocate_ranks(sensitivities, avg_rank=2)
    peft_model = get_peft_model(tiny_gpt2(), to_lora_config(allocation, lora_alpha=4))
    assert lora_ranks(peft_model) == allocation.ranks


def test_ambiguous_names_are_escaped():
    # "h.1.x" used as a regex would also match the end of "a.h11.x" (dots match any character)
    ranks = {"h.1.x": 2, "a.h11.x": 5}
    config = to_lora_config(ranks, lora_alpha=2)
    assert config.rank_pattern == {r"h\.1\.x": 2, "a.h11.x": 5}
