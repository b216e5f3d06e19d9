"""The opt-in estimators beyond the paper (`obd`, `kfac`, `gradient_spectrum`) against references computed
another way: hand sums over explicitly captured inputs, per-token output gradients from retain_grad, and a
manual gradient loop with torch.linalg.svdvals."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from senslora import estimate_sensitivity, find_target_layers
from senslora.core.estimators import gradient_spectra, kfac_diagonals, obd_diagonals
from senslora.core.metrics import ModuleSensitivity, sensitivities_from_json, sensitivities_to_json

QKV = ("attention.self.query", "attention.self.key", "attention.self.value")


class ToyNet(nn.Module):
    """Token-wise Linear -> tanh -> Conv1D (weight stored (in, out)) -> Linear, masked mean-squared loss."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.first = nn.Linear(5, 4)
        self.middle = Conv1D(6, 4)  # (nf=out, nx=in): weight (4, 6)
        nn.init.normal_(self.middle.weight)
        self.last = nn.Linear(6, 3)
        self.to(torch.float64)

    def pieces(self, inputs):
        """The three layer inputs and outputs, computed by hand from the weights (no module call)."""
        y1 = inputs @ self.first.weight.T + self.first.bias
        x2 = torch.tanh(y1)
        y2 = x2 @ self.middle.weight + self.middle.bias
        x3 = torch.relu(y2)
        y3 = x3 @ self.last.weight.T + self.last.bias
        return (inputs, y1), (x2, y2), (x3, y3)

    @staticmethod
    def loss_of(out, attention_mask, targets):
        mask = attention_mask.to(out.dtype)[..., None]
        return ((out - targets) ** 2 * mask).sum() / mask.sum()

    def forward(self, inputs, attention_mask=None, targets=None):
        out = self.last(torch.relu(self.middle(torch.tanh(self.first(inputs)))))
        loss = None if targets is None else self.loss_of(out, attention_mask, targets)
        return SimpleNamespace(loss=loss, logits=out)


def weights_out_in(model: ToyNet) -> list[torch.Tensor]:
    return [model.first.weight.detach(), model.middle.weight.detach().T, model.last.weight.detach()]


# obd


def test_obd_equals_weight_squared_times_hand_input_hessian(toy_batches):
    model, batches = ToyNet(), toy_batches()
    diagonals = obd_diagonals(model, find_target_layers(model), batches, progress=False)
    sums, count = [torch.zeros(5), torch.zeros(4), torch.zeros(6)], 0
    with torch.no_grad():
        for b in batches:
            keep = b["attention_mask"].bool()
            for i, (x, _) in enumerate(model.pieces(b["inputs"])):
                kept = x[keep]  # (N_b, d_in): the non-padding rows of X^T
                sums[i] = sums[i] + torch.diagonal(kept.T @ kept)  # diag(X X^T)
            count += int(keep.sum())
    for name, weight, total in zip(("first", "middle", "last"), weights_out_in(model), sums, strict=True):
        expected = weight**2 * (2 * total / count)[None, :]
        torch.testing.assert_close(diagonals[name], expected.reshape(-1))


def test_obd_tells_query_key_value_apart_where_activation_ties(tiny_bert, token_batches):
    model, batches = tiny_bert(), token_batches()
    activation = estimate_sensitivity(model, batches, estimator="activation", progress=False)
    obd = estimate_sensitivity(model, batches, estimator="obd", progress=False)
    prefix = "bert.encoder.layer.0."
    tied = [activation[prefix + m].trace for m in QKV]
    assert tied[0] == pytest.approx(tied[1], rel=1e-12) == pytest.approx(tied[2], rel=1e-12)
    traces = sorted(obd[prefix + m].trace for m in QKV)
    assert traces[1] > traces[0] * 1.001 and traces[2] > traces[1] * 1.001
    assert obd[prefix + "attention.self.query"].num_entries == 32 * 32
    # Weight-aware: tripling the key weights multiplies its saliency by 9 and leaves the inputs' proxy alone.
    with torch.no_grad():
        model.bert.encoder.layer[0].attention.self.key.weight.mul_(3.0)
    scaled = estimate_sensitivity(model, batches, estimator="obd", progress=False)
    key = prefix + "attention.self.key"
    assert scaled[key].trace == pytest.approx(9 * obd[key].trace, rel=1e-6)
    assert scaled[prefix + "attention.self.query"].trace == pytest.approx(obd[prefix + "attention.self.query"].trace)


def test_obd_needs_no_labels_and_refuses_quantized_weights(tiny_bert, token_batches):
    model = tiny_bert()
    result = estimate_sensitivity(model, token_batches(labels=None), estimator="obd", progress=False)
    assert all(item.trace > 0 for item in result.values())
    layer = find_target_layers(model)[0]
    layer.module.weight = nn.Parameter(torch.zeros(32, 32, dtype=torch.uint8), requires_grad=False)
    with pytest.raises(ValueError, match="full-precision weights"):
        estimate_sensitivity(model, token_batches(), estimator="obd", progress=False)


# kfac


def test_kfac_equals_per_token_outer_product_from_retained_output_gradients(toy_batches):
    model, batches = ToyNet(), toy_batches()
    diagonals = kfac_diagonals(model, find_target_layers(model), batches, progress=False)
    x_sums, g_sums, count = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], 0
    for b in batches:
        pieces = model.pieces(b["inputs"])
        for _, y in pieces:
            y.retain_grad()
        model.loss_of(pieces[-1][1], b["attention_mask"], b["targets"]).backward()
        for row, token in b["attention_mask"].nonzero().tolist():  # one token at a time
            for i, (x, y) in enumerate(pieces):
                x_sums[i] = x_sums[i] + x[row, token].detach() ** 2
                g_sums[i] = g_sums[i] + y.grad[row, token] ** 2
            count += 1
    model.zero_grad()
    for i, name in enumerate(("first", "middle", "last")):
        expected = torch.outer(g_sums[i] / count, x_sums[i] / count)  # E[g_o^2] * E[x_j^2], (d_out, d_in)
        torch.testing.assert_close(diagonals[name], expected.reshape(-1))


def test_kfac_same_under_gradient_checkpointing_and_leaves_no_gradients(tiny_bert, token_batches):
    batches = token_batches(labels="class")
    plain = estimate_sensitivity(tiny_bert(), batches, estimator="kfac", progress=False)
    model = tiny_bert()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    checkpointed = estimate_sensitivity(model, batches, estimator="kfac", progress=False)
    for name, item in plain.items():
        assert checkpointed[name].trace == pytest.approx(item.trace, rel=1e-5), name
    assert all(p.grad is None for p in model.parameters())
    prefix = "bert.encoder.layer.0."
    traces = sorted(plain[prefix + m].trace for m in QKV)
    assert traces[1] > traces[0] * 1.01 and traces[2] > traces[1] * 1.01


def test_kfac_on_conv1d_decoder_and_missing_labels(tiny_gpt2, token_batches):
    model = tiny_gpt2()
    result = estimate_sensitivity(model, token_batches(labels="lm"), estimator="kfac", progress=False)
    assert result["transformer.h.0.attn.c_attn"].num_entries == 32 * 96
    with pytest.raises(ValueError):
        estimate_sensitivity(model, token_batches(labels=None), estimator="kfac", progress=False)


# gradient_spectrum


def test_gradient_spectrum_equals_svd_of_manual_mean_gradient(toy_batches):
    model, batches = ToyNet(), toy_batches()
    spectra = gradient_spectra(model, find_target_layers(model), batches, progress=False)
    for name, module in (("first", model.first), ("middle", model.middle), ("last", model.last)):
        total = torch.zeros_like(module.weight)
        for b in batches:
            out = model.pieces(b["inputs"])[-1][1]
            loss = model.loss_of(out, b["attention_mask"], b["targets"])
            total += torch.autograd.grad(loss, module.weight)[0]
        expected = torch.linalg.svdvals(total / len(batches))
        torch.testing.assert_close(spectra[name], expected)


def test_gradient_spectrum_sensitivity_carries_spectrum_and_its_energy(tiny_bert, token_batches):
    model, batches = tiny_bert(), token_batches(labels="class")
    result = estimate_sensitivity(model, batches, estimator="gradient_spectrum", progress=False)
    layer = find_target_layers(model, ["bert.encoder.layer.1.intermediate.dense"])[0]
    total = torch.zeros_like(layer.weight)
    for b in batches:
        total += torch.autograd.grad(model(**b).loss, layer.weight)[0]
    item = result[layer.name]
    mean = total / len(batches)
    assert len(item.spectrum) == min(32, 64) == item.num_entries
    assert item.trace == pytest.approx(float(mean.double().square().sum()), rel=1e-5)  # ||G||_F^2
    assert list(item.spectrum) == sorted(item.spectrum, reverse=True)
    assert all(p.grad is None for p in model.parameters())


# the spectrum field in JSON


def test_spectrum_round_trips_and_old_files_stay_readable():
    with_spectrum = ModuleSensitivity("a", 2, 3, 5.0, 4.0, 1, 2, spectrum=(2.0, 1.0))
    without = ModuleSensitivity("b", 2, 3, 1.0, 1.0, 1, 2)
    assert "spectrum" not in without.to_dict()
    loaded, _ = sensitivities_from_json(sensitivities_to_json({"a": with_spectrum, "b": without}))
    assert loaded == {"a": with_spectrum, "b": without}
    with pytest.raises(ValueError, match="spectrum values must be finite"):
        ModuleSensitivity.from_dict({**with_spectrum.to_dict(), "spectrum": [1.0, -1.0]})
