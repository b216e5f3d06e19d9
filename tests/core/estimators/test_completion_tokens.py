"""Calibration on completions: the activation estimator with calibration_tokens="completion" equals
diag(2XX^T)/N computed by hand over the positions a completion-only loss scores (labels[t + 1] != -100)."""

from __future__ import annotations

import pytest
import torch

import senslora
from senslora.core.estimators import activation_diagonals, obd_diagonals
from senslora.core.targets import find_target_layers


def instruction_batches(seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Right-padded prompt + completion rows; labels -100 on the prompt and on padding."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(2):
        input_ids = torch.randint(1, 100, (3, 10), generator=generator)
        lengths, prompts = torch.tensor([10, 8, 6]), torch.tensor([4, 5, 2])
        positions = torch.arange(10)[None, :]
        mask = (positions < lengths[:, None]).long()
        input_ids = input_ids * mask
        labels = input_ids.masked_fill((positions < prompts[:, None]) | (mask == 0), -100)
        batches.append({"input_ids": input_ids, "attention_mask": mask, "labels": labels})
    return batches


def hand_masked_diagonals(model, names, batches) -> dict[str, torch.Tensor]:
    """Layer inputs captured whole, then only positions t with labels[t + 1] != -100 kept, by hand."""
    captured: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    modules = dict(model.named_modules())
    handles = [
        modules[name].register_forward_pre_hook(lambda _m, args, name=name: captured[name].append(args[0].detach()))
        for name in names
    ]
    with torch.no_grad():
        for batch in batches:
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    for handle in handles:
        handle.remove()
    result = {}
    for name in names:
        rows = []
        for x, batch in zip(captured[name], batches, strict=True):
            labels = batch["labels"]
            for b in range(labels.shape[0]):
                for t in range(labels.shape[1] - 1):
                    if labels[b, t + 1] != -100:
                        rows.append(x[b, t].double())
        stacked = torch.stack(rows)  # (N, d_in), N = completion positions
        result[name] = 2.0 * stacked.square().sum(0) / stacked.shape[0]
    return result


def test_completion_tokens_equal_the_hand_masked_statistic(tiny_llama):
    model, batches = tiny_llama(), instruction_batches()
    layers = find_target_layers(model)
    names = [layer.name for layer in layers]
    expected = hand_masked_diagonals(model, names, batches)
    got = activation_diagonals(model, layers, batches, progress=False, calibration_tokens="completion")
    every = activation_diagonals(model, layers, batches, progress=False)
    for name in names:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-6, atol=1e-9)
        assert not torch.allclose(every[name], expected[name], rtol=1e-3)  # the prompt tokens did count before
    # and the sensitivities built on it: trace S_global = sum of the hand-masked diagonal
    sensitivities = senslora.estimate_sensitivity(model, batches, calibration_tokens="completion", progress=False)
    for name in names:
        assert sensitivities[name].trace == pytest.approx(
            float(expected[name].sum()), rel=1e-6
        )  # inputs reduced in float32
    # obd reads the same statistic: W^2 * h with the completion-only h
    obd = obd_diagonals(model, layers[:1], batches, progress=False, calibration_tokens="completion")
    weight = layers[0].weight.detach().double()
    torch.testing.assert_close(obd[names[0]], (weight.square() * expected[names[0]][None, :]).reshape(-1))


def test_estimate_sensitivity_refuses_completion_without_labels_or_with_a_loss_estimator(tiny_llama, token_batches):
    with pytest.raises(ValueError, match="needs token labels"):
        senslora.estimate_sensitivity(tiny_llama(), token_batches(), calibration_tokens="completion", progress=False)
    with pytest.raises(ValueError, match="forward-only"):
        senslora.estimate_sensitivity(
            tiny_llama(), instruction_batches(), estimator="fisher", calibration_tokens="completion", progress=False
        )
