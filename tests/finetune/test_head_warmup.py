"""Head warm-up moves only the task head; the base stays bitwise equal; the sensitivity changes."""

from __future__ import annotations

import json

import pytest
import torch

from senslora import estimate_sensitivity
from senslora.finetune.training.head_warmup import restore_head, snapshot_head, task_head_parameters, warm_up_head


def test_only_head_parameters_move(tiny_bert, token_batches):
    model = tiny_bert()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    one_batch = token_batches(count=1, labels="class")  # the same batch each step: the loss must fall
    record = warm_up_head(model, one_batch, steps=20, learning_rate=1e-2, progress=False)
    assert record["parameters"] == ["classifier.bias", "classifier.weight"]
    assert record["steps"] == 20 and record["loss_last"] < record["loss_first"]
    for name, parameter in model.named_parameters():
        if name.startswith("classifier."):
            assert not torch.equal(parameter, before[name]), name
        else:
            assert torch.equal(parameter, before[name]), name  # bitwise equal
        assert parameter.requires_grad == flags[name] and parameter.grad is None


def test_snapshot_and_restore(tiny_bert, token_batches):
    model = tiny_bert()
    snapshot = snapshot_head(model)
    warm_up_head(model, token_batches(labels="class"), steps=5, learning_rate=1e-2, progress=False)
    restore_head(model, snapshot)
    for name, parameter in task_head_parameters(model).items():
        assert torch.equal(parameter, snapshot[name])


def test_warmup_changes_loss_based_sensitivity_only(tiny_bert, token_batches):
    model = tiny_bert()
    batches = token_batches(labels="class")
    fisher_before = estimate_sensitivity(model, batches, estimator="fisher", progress=False)
    activation_before = estimate_sensitivity(model, batches, progress=False)
    warm_up_head(model, batches, steps=30, learning_rate=1e-2, progress=False)
    fisher_after = estimate_sensitivity(model, batches, estimator="fisher", progress=False)
    activation_after = estimate_sensitivity(model, batches, progress=False)
    assert activation_after == activation_before  # the head does not feed any target's input
    pooler = "bert.pooler.dense"
    assert fisher_after[pooler].trace != fisher_before[pooler].trace


def test_bad_warmup_requests(tiny_bert, tiny_llama, token_batches):
    with pytest.raises(ValueError, match="task head"):
        warm_up_head(tiny_llama(), token_batches(labels="lm"), steps=2, progress=False)
    with pytest.raises(ValueError, match="steps"):
        warm_up_head(tiny_bert(), token_batches(labels="class"), steps=0, progress=False)
    with pytest.raises(ValueError, match="labels"):
        warm_up_head(tiny_bert(), token_batches(), steps=2, progress=False)


def _warmup_config(model_dir, data_csv, **overrides):
    from senslora.finetune.config import RunConfig

    settings = dict(model=str(model_dir), data=str(data_csv), estimator="fisher", head_warmup_steps=5)
    settings |= dict(calibration_examples=32, max_length=32, progress=False)
    return RunConfig(**(settings | overrides))


@pytest.mark.parametrize("restore", [False, True])
def test_pipeline_keeps_or_restores_the_warmed_head(tiny_bert_dir, sentiment_csv, restore):
    from senslora.finetune.preparation import calibration_batches, prepare
    from senslora.finetune.rank_steps import run_sensitivity

    config = _warmup_config(tiny_bert_dir, sentiment_csv, restore_warmed_head=restore)
    prepared = prepare(config)
    before = snapshot_head(prepared.model)
    base_before = {n: p.detach().clone() for n, p in prepared.model.named_parameters() if n not in before}
    _, metadata = run_sensitivity(config, prepared, calibration_batches(config, prepared))
    record = metadata["head_warmup"]
    assert record["steps"] == 5 and record["head_kept"] is (not restore)
    assert record["parameters"] == sorted(before)
    after = task_head_parameters(prepared.model)
    assert all(torch.equal(after[name], before[name]) for name in before) is restore
    for name, parameter in prepared.model.named_parameters():
        if name in base_before:
            assert torch.equal(parameter, base_before[name]), name


@pytest.mark.parametrize(("overrides", "expected"), [({}, 2e-2), ({"head_warmup_learning_rate": 5e-3}, 5e-3)])
def test_warmup_learning_rate_is_its_own_option(tiny_bert_dir, sentiment_csv, overrides, expected):
    """The warm-up uses --head-warmup-learning-rate when given, else the training --learning-rate."""
    from senslora.finetune.preparation import calibration_batches, prepare
    from senslora.finetune.rank_steps import run_sensitivity

    config = _warmup_config(tiny_bert_dir, sentiment_csv, learning_rate=2e-2, **overrides)
    prepared = prepare(config)
    _, metadata = run_sensitivity(config, prepared, calibration_batches(config, prepared))
    assert metadata["head_warmup"]["learning_rate"] == expected


def test_finetune_sidecar_records_the_warmup(tiny_bert_dir, sentiment_csv, tmp_path):

    from senslora.finetune.pipeline import finetune

    run_dir = tmp_path / "run"
    config = _warmup_config(tiny_bert_dir, sentiment_csv, output_dir=str(run_dir), epochs=1, max_steps=2)
    finetune(config)
    side = json.loads((run_dir / "adapter" / "senslora.json").read_text())
    sensitivity = json.loads((run_dir / "sensitivity.json").read_text())
    for record in (side["sensitivity"]["head_warmup"], sensitivity["head_warmup"]):
        assert record["steps"] == 5 and record["head_kept"] is True


def test_loss_based_defaults_resolve_by_estimator_and_task():
    from senslora.finetune.config import effective_head_warmup_steps

    assert effective_head_warmup_steps(None, "fisher", "classification") == 50
    assert effective_head_warmup_steps(None, "hutchinson", "regression") == 50
    assert effective_head_warmup_steps(None, "fisher", "causal_lm") == 0  # no new head to warm up
    assert effective_head_warmup_steps(None, "activation", "classification") == 0
    assert effective_head_warmup_steps(7, "activation", "classification") == 0  # activation never uses the head
    assert effective_head_warmup_steps(0, "fisher", "classification") == 0


def test_every_estimator_caps_ranks_at_twice_the_average_by_default():
    """The 2x cap is the default for every estimator (activation too); 0 (or none) reproduces the paper."""
    from senslora.finetune.config import RunConfig, effective_max_rank_factor

    assert RunConfig().max_rank_factor == 2.0 and effective_max_rank_factor(RunConfig().max_rank_factor) == 2.0
    assert effective_max_rank_factor(0) is None and effective_max_rank_factor(None) is None
    assert effective_max_rank_factor(3.0) == 3.0
