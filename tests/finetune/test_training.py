"""Training on transformers.Trainer: hand schedule, accumulation = larger batch, data order, early stopping."""

from __future__ import annotations

import math

import pytest
import torch
from peft import get_peft_model

from senslora import allocate_ranks, estimate_sensitivity, to_lora_config
from senslora.finetune.training.engine import train, training_arguments
from senslora.finetune.training.settings import TrainingConfig, epoch_order, learning_rate_factor, steps_per_epoch


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


@pytest.fixture
def make_examples(token_batches):
    """Factory: make_examples(count=32) -> single labelled examples cut from seeded token batches."""

    def build(count: int = 32):
        batches = token_batches(count=count // 4, batch=4, length=8, labels="class", seed=3)
        return [{k: v[i] for k, v in b.items()} for b in batches for i in range(4)]

    return build


def _collate(features):
    return {k: torch.stack([f[k] for f in features]) for k in features[0]}


@pytest.fixture
def peft_bert(tiny_bert, token_batches):
    """Factory: peft_bert() -> the tiny BERT without dropout, wrapped with LoRA at its allocated ranks."""

    def build():
        model = tiny_bert()
        for module in model.modules():  # no dropout: training is then a deterministic function of the batches
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        allocation = allocate_ranks(estimate_sensitivity(model, token_batches(), progress=False), avg_rank=2)
        return get_peft_model(model, to_lora_config(allocation, lora_alpha=4, task_type="SEQ_CLS"))

    return build


@pytest.fixture
def trained_state(peft_bert, make_examples):
    """Factory: trained_state(tmp_path, **overrides) -> the trainable weights after one epoch of training."""

    def run(tmp_path, **overrides):
        torch.manual_seed(0)
        model = peft_bert()
        config = TrainingConfig(epochs=1, learning_rate=1e-2, warmup_ratio=0.0, max_grad_norm=None, **overrides)
        train(
            model,
            make_examples(),
            _collate,
            lambda m: {"accuracy": 0.0},
            config,
            tmp_path,
            main_metric="accuracy",
            greater_is_better=True,
            progress=False,
        )
        return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    return run


def test_accumulation_equals_larger_batch(tmp_path, trained_state):
    """With equal micro-batches and no dropout, 2 x 8 accumulated is the same step as one batch of 16."""
    big = trained_state(tmp_path / "a", batch_size=16)
    accumulated = trained_state(tmp_path / "b", batch_size=8, gradient_accumulation_steps=2)
    for name, value in big.items():
        torch.testing.assert_close(accumulated[name], value, rtol=1e-4, atol=1e-6)
    different = trained_state(tmp_path / "c", batch_size=8)
    assert any(not torch.allclose(different[n], v) for n, v in big.items())


def test_bf16_and_gradient_checkpointing_run(tmp_path, trained_state):
    state = trained_state(tmp_path, batch_size=16, mixed_precision="bf16", gradient_checkpointing=True)
    assert all(torch.isfinite(v).all() for v in state.values())


def test_stock_trainer_trains_our_peft_model(tmp_path, peft_bert, make_examples):
    """transformers.Trainer, no callback: LoRA weights move, base weights do not."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    model = peft_bert()
    examples = make_examples()
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


@pytest.fixture
def train_with_log(peft_bert, make_examples):
    """Factory: train_with_log(tmp_path, evaluations=None, **overrides) trains the tiny BERT with log_every 1
    and returns (result, log records)."""

    def run(tmp_path, evaluations=None, **overrides):
        import json

        torch.manual_seed(0)
        model = peft_bert()
        scores = iter(evaluations or [])
        config = TrainingConfig(epochs=1, learning_rate=1e-2, log_every=1, **overrides)
        result = train(
            model,
            make_examples(),
            _collate,
            lambda m: {"accuracy": next(scores, 0.0)},
            config,
            tmp_path,
            main_metric="accuracy",
            greater_is_better=True,
            progress=False,
        )
        records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
        return result, records

    return run


def test_trainer_follows_the_hand_schedule(tmp_path, train_with_log):
    """32 examples, batch 4: 8 steps, warmup floor(0.25 x 8) = 2, then linear decay to 0 at step 8.
    The learning rate each step used, as logged, written out by hand (no lr-0 first step)."""
    _, records = train_with_log(tmp_path, batch_size=4, warmup_ratio=0.25)
    rates = [r["learning_rate"] for r in records if "loss" in r]
    assert rates == pytest.approx([1e-2 * f for f in (0.5, 1.0, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6)])


def test_trainer_visits_examples_in_the_seeded_order(tmp_path, peft_bert, make_examples):
    """The first batches the model sees are the examples of a permutation drawn from seed * 100003 + epoch."""
    seen = []
    torch.manual_seed(0)
    model = peft_bert()
    model.base_model.model.bert.embeddings.word_embeddings.register_forward_hook(
        lambda module, inputs, output: seen.append(inputs[0].clone()) if module.training else None
    )
    examples = make_examples()
    config = TrainingConfig(epochs=2, batch_size=8, learning_rate=1e-2, seed=5)
    train(
        model,
        examples,
        _collate,
        lambda m: {"accuracy": 0.0},
        config,
        tmp_path,
        main_metric="accuracy",
        greater_is_better=True,
        progress=False,
    )
    for epoch in range(2):
        order = torch.randperm(32, generator=torch.Generator().manual_seed(5 * 100_003 + epoch)).tolist()
        for batch in range(4):
            expected = torch.stack([examples[i]["input_ids"] for i in order[batch * 8 : (batch + 1) * 8]])
            assert torch.equal(seen[epoch * 4 + batch], expected), (epoch, batch)
    assert (
        epoch_order(32, 5, 1) == torch.randperm(32, generator=torch.Generator().manual_seed(5 * 100_003 + 1)).tolist()
    )


def test_early_stopping_after_patience_evaluations_without_gain(tmp_path, train_with_log):
    """Evaluated every step, accuracy 0.5 then 0.4, 0.3: patience 2 stops after step 3 of 8 and keeps step 1."""
    result, records = train_with_log(
        tmp_path, evaluations=[0.5, 0.4, 0.3, 0.9], batch_size=4, eval_steps=1, early_stopping_patience=2
    )
    assert result.global_step == 3
    assert [h["step"] for h in result.history] == [1, 2, 3]
    assert result.best_step == 1 and result.best_metrics == {"accuracy": 0.5}
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_cadence_and_reporting_options_reach_training_arguments(tmp_path):
    config = TrainingConfig(save_steps=7, eval_steps=5, report_to=["tensorboard"], max_grad_norm=None)
    arguments = training_arguments(config, tmp_path, torch.device("cpu"))
    assert (arguments.save_strategy, arguments.save_steps) == ("steps", 7)
    assert (arguments.eval_strategy, arguments.eval_steps) == ("steps", 5)
    assert arguments.report_to == ["tensorboard"] and arguments.max_grad_norm == 0.0
    defaults = training_arguments(TrainingConfig(), tmp_path, torch.device("cpu"))
    assert (defaults.save_strategy, defaults.eval_strategy) == ("epoch", "epoch")
    assert defaults.report_to in ([], "none", ["none"]) and defaults.output_dir == str(tmp_path / "checkpoints")


def test_shipped_accelerate_configs_parse():
    """Every YAML under configs/accelerate loads as an Accelerate launch config of its declared type."""
    from pathlib import Path

    import yaml

    folder = Path(__file__).resolve().parents[2] / "configs" / "accelerate"
    files = sorted(folder.glob("*.yaml"))
    assert {f.name for f in files} >= {"ddp.yaml", "fsdp.yaml", "deepspeed_zero3.yaml"}
    from accelerate.commands.config.config_args import ClusterConfig

    for path in files:
        assert isinstance(yaml.safe_load(path.read_text()), dict), path
        config = ClusterConfig.from_yaml_file(str(path))  # refuses keys Accelerate does not know
        assert config.num_processes >= 1, path
        assert str(config.distributed_type).split(".")[-1] in ("MULTI_GPU", "MULTI_CPU", "FSDP", "DEEPSPEED"), path


def test_quiet_training_prints_nothing(tmp_path, capsys, trained_state):
    """progress=False: no progress bar and none of Trainer's printed log dicts (log.jsonl keeps them)."""
    trained_state(tmp_path, batch_size=8, log_every=1)
    captured = capsys.readouterr()
    assert "'loss'" not in captured.out and "'loss'" not in captured.err
    assert '"loss"' in (tmp_path / "log.jsonl").read_text()
