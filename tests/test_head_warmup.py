"""Head warm-up moves only the task head; the base stays bitwise equal; the sensitivity changes."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_bert, tiny_llama, token_batches
from senslora import estimate_sensitivity
from senslora.head_warmup import restore_head, snapshot_head, task_head_parameters, warm_up_head


def test_only_head_parameters_move():
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


def test_snapshot_and_restore():
    model = tiny_bert()
    snapshot = snapshot_head(model)
    warm_up_head(model, token_batches(labels="class"), steps=5, learning_rate=1e-2, progress=False)
    restore_head(model, snapshot)
    for name, parameter in task_head_parameters(model).items():
        assert torch.equal(parameter, snapshot[name])


def test_warmup_changes_loss_based_sensitivity_only():
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


def test_bad_warmup_requests():
    with pytest.raises(ValueError, match="task head"):
        warm_up_head(tiny_llama(), token_batches(labels="lm"), steps=2, progress=False)
    with pytest.raises(ValueError, match="steps"):
        warm_up_head(tiny_bert(), token_batches(labels="class"), steps=0, progress=False)
    with pytest.raises(ValueError, match="labels"):
        warm_up_head(tiny_bert(), token_batches(), steps=2, progress=False)
