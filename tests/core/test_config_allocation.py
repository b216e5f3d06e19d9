"""`allocate_lora_config`: the user's LoraConfig back with the ranks filled; checked through stock
`get_peft_model` against targets listed by hand and an allocation computed separately."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

import senslora

LAYER_MODULES = [f"self_attn.{p}_proj" for p in "qkvo"] + [f"mlp.{p}_proj" for p in ("gate", "up", "down")]


def _adapted(peft_model) -> dict[str, object]:
    return {
        name.removeprefix("base_model.model."): module
        for name, module in peft_model.named_modules()
        if hasattr(module, "r") and isinstance(module.r, dict) and "default" in module.r
    }


def test_all_linear_with_exclusions_and_the_users_options(tiny_llama, token_batches):
    batches = token_batches()
    user = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules="all-linear",
        exclude_modules=["model.layers.1.mlp.down_proj"],
        use_rslora=True,
        use_dora=True,
        init_lora_weights="gaussian",
        lora_dropout=0.1,
        task_type="CAUSAL_LM",
    )
    filled = senslora.allocate_lora_config(tiny_llama(), user, batches)
    # by hand: every Linear of both layers except the excluded one; lm_head is PEFT's output layer
    targets = [f"model.layers.{i}.{m}" for i in (0, 1) for m in LAYER_MODULES]
    targets.remove("model.layers.1.mlp.down_proj")
    expected = senslora.allocate_ranks(
        senslora.estimate_sensitivity(tiny_llama(), batches, target_modules=targets, progress=False), avg_rank=4
    ).ranks
    assert set(expected) == set(targets)
    peft_model = get_peft_model(tiny_llama(), copy.deepcopy(filled))  # PEFT resolves all-linear in place
    adapted = _adapted(peft_model)
    assert {name: module.r["default"] for name, module in adapted.items()} == expected
    assert len(set(expected.values())) > 1  # the ranks differ, so this checks the pattern, not r
    for module in adapted.values():
        # the user's scale lora_alpha / sqrt(r) = 8 / 2 on every module (rsLoRA kept), DoRA kept
        assert module.scaling["default"] == pytest.approx(4.0)
        assert "default" in module.lora_magnitude_vector
    assert filled.target_modules == "all-linear" and filled.init_lora_weights == "gaussian"
    assert filled.use_rslora and filled.use_dora and filled.lora_dropout == 0.1
    assert "model.layers.1.mlp.down_proj" in filled.exclude_modules
    assert user.rank_pattern == {} and user.exclude_modules == {"model.layers.1.mlp.down_proj"}  # not changed


def test_layers_to_transform_and_rank_zero_modules_excluded(tiny_llama, token_batches):
    batches = token_batches()
    user = LoraConfig(
        r=1, lora_alpha=2, target_modules=[m.split(".")[1] for m in LAYER_MODULES], layers_to_transform=[1]
    )
    options = {"min_rank": 0, "budget_unit": "rank"}
    filled = senslora.allocate_lora_config(tiny_llama(), user, batches, **options)
    targets = [f"model.layers.1.{m}" for m in LAYER_MODULES]
    expected = senslora.allocate_ranks(
        senslora.estimate_sensitivity(tiny_llama(), batches, target_modules=targets, progress=False),
        avg_rank=1,
        **options,
    ).ranks
    zero = sorted(name for name, rank in expected.items() if rank == 0)
    assert zero  # 7 ranks in {0, 1, 2} summing to 7, not all 1 here
    assert filled.exclude_modules == set(zero) and filled.layers_to_transform == [1]
    adapted = _adapted(get_peft_model(tiny_llama(), filled))
    assert {name: m.r["default"] for name, m in adapted.items()} == {n: r for n, r in expected.items() if r > 0}
    # scale mode: alpha = lora_alpha * r_m / r, so alpha / r_m = 2 on every module
    assert all(m.scaling["default"] == pytest.approx(2.0) for m in adapted.values())


def test_run_model_callable_gives_the_ranks_of_the_dict_batches(tiny_llama, token_batches):
    batches = [
        {"input_ids": b["input_ids"].clamp(min=1), "attention_mask": torch.ones_like(b["input_ids"])}
        for b in token_batches()
    ]
    user = LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "down_proj"])
    from_batches = senslora.allocate_lora_config(tiny_llama(), user, batches, alpha_mode="fixed")

    def run_model(model):
        for batch in batches:
            model(batch["input_ids"])  # positional input: no dict needed

    from_callable = senslora.allocate_lora_config(tiny_llama(), user, run_model=run_model, alpha_mode="fixed")
    assert from_callable.rank_pattern == from_batches.rank_pattern and from_callable.alpha_pattern == {}
    assert len(set(from_batches.rank_pattern.values())) > 1


@pytest.mark.parametrize(
    ("config", "kwargs", "message"),
    [
        (LoraConfig(target_modules=["no_such_module"]), {}, "match no module"),
        (LoraConfig(target_modules=["q_proj"], exclude_modules=["q_proj"]), {}, "match no module"),
        (LoraConfig(target_modules=["embed_tokens"]), {}, "Linear and Conv1D layers only"),
        (LoraConfig(target_modules=["q_proj"], rank_pattern={"q_proj": 2}), {}, "already has a rank_pattern"),
        (LoraConfig(target_modules=["q_proj"]), {"estimator": "fisher", "run_model": print}, "forward-only"),
    ],
)
def test_bad_configs_are_refused(tiny_llama, token_batches, config, kwargs, message):
    batches = None if "run_model" in kwargs else token_batches()
    with pytest.raises(ValueError, match=message):
        senslora.allocate_lora_config(tiny_llama(), config, batches, **kwargs)
