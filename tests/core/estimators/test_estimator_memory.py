"""Loss-based estimators on large-model settings: gradient checkpointing and half-precision weights.

References are the same estimators on the plain float32 model without checkpointing: checkpointing must
change only where activations come from (recomputed in the backward), never the numbers; a bfloat16 model
must still accumulate in float32 and land near the float32 estimate.
"""

from __future__ import annotations

import pytest
import torch

from senslora import find_target_layers
from senslora.core.estimators import activation_diagonals, fisher_diagonals, hutchinson_diagonals


def run(estimator: str, model, batches):
    layers = find_target_layers(model)
    if estimator == "fisher":
        return fisher_diagonals(model, layers, batches, progress=False)
    return hutchinson_diagonals(model, layers, batches, num_probes=2, seed=3, progress=False)


@pytest.mark.parametrize("estimator", ["fisher", "hutchinson"])
def test_gradient_checkpointing_recomputes_and_changes_nothing(estimator, tiny_bert, token_batches):
    batches = token_batches(count=2, labels="class")
    reference = run(estimator, tiny_bert(), batches)  # BERT has dropout: it must stay off in both runs

    model = tiny_bert()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    modes = {name: m.training for name, m in model.named_modules()}
    calls = []
    model.bert.encoder.layer[0].intermediate.register_forward_hook(lambda *_: calls.append(1))
    estimate = run(estimator, model, batches)
    forward_passes = len(batches) * (1 if estimator == "fisher" else 2)  # hutchinson: one forward per probe
    assert len(calls) == 2 * forward_passes  # each checkpointed layer ran again in the backward
    assert {name: m.training for name, m in model.named_modules()} == modes
    for name, expected in reference.items():
        torch.testing.assert_close(estimate[name], expected, rtol=1e-5, atol=1e-7 * float(expected.abs().max()))


@pytest.mark.parametrize("estimator", ["activation", "fisher", "hutchinson"])
def test_bfloat16_model_accumulates_in_full_precision(estimator, tiny_llama, token_batches):
    batches = token_batches(count=2, labels="lm")
    full = tiny_llama()
    half = tiny_llama().to(torch.bfloat16)
    if estimator == "activation":
        reference = activation_diagonals(full, find_target_layers(full), batches, progress=False)
        estimate = activation_diagonals(half, find_target_layers(half), batches, progress=False)
        wanted = torch.float64
    else:
        reference, estimate, wanted = run(estimator, full, batches), run(estimator, half, batches), torch.float32
    for name, expected in reference.items():
        assert estimate[name].dtype == wanted, name
        assert torch.isfinite(estimate[name]).all(), name
        # bfloat16 keeps 8 bits of mantissa: the module totals agree to a few percent of the entries' size
        # (hutchinson's entries have both signs, so its total can be much smaller than that size)
        size = float(expected.double().abs().sum())
        assert float(estimate[name].double().sum()) == pytest.approx(float(expected.double().sum()), abs=0.05 * size), (
            name
        )
