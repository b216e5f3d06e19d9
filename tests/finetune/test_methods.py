"""The fine-tuning methods: each one's behaviour in one place, checked against hand-written expectations."""

from __future__ import annotations

import pytest

from senslora.finetune.methods import METHODS, REGISTRY, get_method


def test_the_registry_is_the_method_list():
    assert METHODS == ("senslora", "lora", "adalora", "eva")
    assert all(REGISTRY[name].name == name for name in METHODS)
    with pytest.raises(ValueError, match="unknown method 'dora'; allowed: senslora, lora, adalora, eva"):
        get_method("dora")


@pytest.mark.parametrize(
    ("name", "with_ranks", "without_ranks", "sft", "allocation", "rank_at_4", "largest_at_8", "state"),
    [
        ("senslora", False, True, True, True, 4, 8, None),
        ("lora", False, False, True, False, 4, 8, None),
        ("adalora", False, False, False, False, 6, 5, "adalora.safetensors"),  # ceil(1.5 x 4); ceil(1.5 x 5) <= 8
        ("eva", True, True, True, False, 4, 8, None),
    ],
)
def test_each_method_declares_what_the_run_must_do(
    name, with_ranks, without_ranks, sft, allocation, rank_at_4, largest_at_8, state
):
    method = get_method(name)
    assert method.needs_calibration(has_ranks=True) is with_ranks
    assert method.needs_calibration(has_ranks=False) is without_ranks
    assert method.trains_on_sft_trainer is sft  # AdaLoRA's loss carries a penalty SFTTrainer would drop
    assert method.uses_allocation is allocation
    assert method.uniform_rank(4) == rank_at_4
    assert method.largest_avg_rank(8) == largest_at_8
    assert method.state_file == state


def test_uniform_rank_above_full_rank_is_refused_with_the_largest_that_fits():
    shapes = {"a": (16, 8), "b": (32, 32)}
    get_method("lora").check_uniform_rank_fits(8, shapes)
    with pytest.raises(ValueError, match="'a' .* full rank 8 .* at most 8"):
        get_method("lora").check_uniform_rank_fits(9, shapes)
    get_method("adalora").check_uniform_rank_fits(5, shapes)  # init_r 8
    with pytest.raises(ValueError, match="init_r 9 = ceil\\(1.5 x avg_rank\\).* at most 5"):
        get_method("adalora").check_uniform_rank_fits(6, shapes)


def test_adalora_checkpoint_state_round_trips():
    """What a checkpoint stores for AdaLoRA (importance scores, rank pattern) is what a resume puts back."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from senslora.finetune.methods import build_peft_model

    adalora = get_method("adalora")
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    model = build_peft_model(
        BertForSequenceClassification(config),
        "adalora",
        task="classification",
        avg_rank=2,
        lora_alpha=4.0,
        total_steps=20,
    )
    allocator = model.base_model.rankallocator
    for kind in ("ipt", "exp_avg_ipt", "exp_avg_unc"):
        getattr(allocator, kind)["layer.x"] = torch.full((3,), float(len(kind)))
    model.peft_config["default"].rank_pattern = {"layer.x": [True, False, True]}
    tensors, pattern = adalora.checkpoint_state(model)
    allocator.reset_ipt()
    model.peft_config["default"].rank_pattern = None
    adalora.restore_checkpoint_state(model, tensors, pattern)
    assert torch.equal(allocator.exp_avg_unc["layer.x"], torch.full((3,), 11.0))
    assert model.peft_config["default"].rank_pattern == {"layer.x": [True, False, True]}


def test_adalora_adapter_with_a_module_pruned_to_rank_0_reloads_in_stock_peft(tmp_path):
    """At low budgets AdaLoRA prunes whole modules; PEFT then saves (0, d) tensors and warns. The adapter
    must still load through `PeftModel.from_pretrained` alone and give the trained model's outputs."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import BertConfig, BertForSequenceClassification

    from senslora.finetune.methods import build_peft_model

    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(tmp_path / "base")
    model = build_peft_model(
        BertForSequenceClassification.from_pretrained(tmp_path / "base"),
        "adalora",
        task="classification",
        avg_rank=2,
        lora_alpha=4.0,
        total_steps=20,
    )
    for name, parameter in model.named_parameters():
        if "lora_" in name:
            parameter.data.normal_()
    prefix = "bert.encoder.layer.0.attention.self"
    targets = [name for name, _ in model.base_model.model.named_parameters() if name.endswith("lora_E.default")]
    pattern = {name.removesuffix(".default"): [True, False, True] for name in targets}
    pattern[f"{prefix}.query.lora_E"] = [False, False, False]
    model.peft_config["default"].rank_pattern = pattern
    model.base_model.rankallocator.mask_using_rank_pattern(model.base_model.model, pattern)
    inputs = torch.randint(0, 50, (2, 7))
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=inputs).logits
    model.save_pretrained(tmp_path / "adapter")

    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert saved[f"base_model.model.{prefix}.query.lora_A"].shape == (0, 16)
    assert saved[f"base_model.model.{prefix}.value.lora_A"].shape == (2, 16)
    base = BertForSequenceClassification.from_pretrained(tmp_path / "base").eval()
    with torch.no_grad():
        assert not torch.allclose(base(input_ids=inputs).logits, expected, atol=1e-3)  # the adapter matters
        reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
        assert torch.allclose(reloaded(input_ids=inputs).logits, expected, atol=1e-6)
