"""Training loop: schedule by hand, accumulation equals a larger batch, stock Trainer compatibility."""

from __future__ import annotations

import math

import pytest
import torch
from peft import get_peft_model

from conftest import tiny_bert, token_batches
from senslora import allocate_ranks, estimate_sensitivity, to_lora_config
from senslora.training import TrainingConfig, learning_rate_factor, steps_per_epoch, train


def test_learning_rate_schedule_by_hand():
    # 10 steps, 2 warmup: 0.5, 1.0, then linear decay over the remaining 8
    linear = [learning_rate_factor(s, 10, 2, "linear") for s in range(10)]
    assert linear == pytest.approx([0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125])
    cosine = [learning_rate_factor(s, 10, 2, "cosine") for s in (2, 6)]
    assert cosine == pytest.approx([1.0, 0.5 * (1 + math.cos(math.pi * 0.5))])
    assert learning_rate_factor(7, 10, 0, "constant") == 1.0


def test_steps_per_epoch():
    assert steps_per_epoch(100, TrainingConfig(batch_size=16)) == 7
    assert steps_per_epoch(100, TrainingConfig(batch_size=16, gradient_accumulation_steps=2)) == 4


def _examples(count: int = 32):
    batches = token_batches(count=count // 4, batch=4, length=8, labels="class", seed=3)
    return [{k: v[i] for k, v in b.items()} for b in batches for i in range(4)]


def _collate(features):
    return {k: torch.stack([f[k] for f in features]) for k in features[0]}


def _peft_bert():
    model = tiny_bert()
    for module in model.modules():  # no dropout: training is then a deterministic function of the batches
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    allocation = allocate_ranks(estimate_sensitivity(model, token_batches(), progress=False), avg_rank=2)
    return get_peft_model(model, to_lora_config(allocation, lora_alpha=4, task_type="SEQ_CLS"))


def _trained_state(tmp_path, **overrides):
    torch.manual_seed(0)
    model = _peft_bert()
    config = TrainingConfig(epochs=1, learning_rate=1e-2, warmup_ratio=0.0, max_grad_norm=None, **overrides)
    train(
        model,
        _examples(),
        _collate,
        lambda m: {"accuracy": 0.0},
        config,
        tmp_path,
        main_metric="accuracy",
        greater_is_better=True,
        progress=False,
    )
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_accumulation_equals_larger_batch(tmp_path):
    """With equal micro-batches and no dropout, 2 x 8 accumulated is the same step as one batch of 16."""
    big = _trained_state(tmp_path / "a", batch_size=16)
    accumulated = _trained_state(tmp_path / "b", batch_size=8, gradient_accumulation_steps=2)
    for name, value in big.items():
        torch.testing.assert_close(accumulated[name], value, rtol=1e-4, atol=1e-6)
    different = _trained_state(tmp_path / "c", batch_size=8)
    assert any(not torch.allclose(different[n], v) for n, v in big.items())


def test_bf16_and_gradient_checkpointing_run(tmp_path):
    state = _trained_state(tmp_path, batch_size=16, mixed_precision="bf16", gradient_checkpointing=True)
    assert all(torch.isfinite(v).all() for v in state.values())


def test_stock_trainer_trains_our_peft_model(tmp_path):
    """transformers.Trainer, no callback: LoRA weights move, base weights do not."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    model = _peft_bert()
    examples = _examples()
    dataset = Dataset.from_dict({k: [e[k].tolist() for e in examples] for k in examples[0]})
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    arguments = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        num_train_epochs=1,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    Trainer(model=model, args=arguments, train_dataset=dataset).train()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all(("lora_" in n or "classifier" in n) for n in moved)
    assert any("lora_B" in n for n in moved)
