"""Estimators against independent references: exact Hessians, explicit gradient loops, hand sums."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian

from senslora import estimate_sensitivity, find_target_layers
from senslora.core.estimators import activation_diagonals, fisher_diagonals, hutchinson_diagonals


@pytest.fixture
def one_thread():
    """Toy nets run thousands of tiny backward passes: one thread avoids the threads' hand-off cost."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class ToyNet(nn.Module):
    """Token-wise two-layer net with a masked mean-squared loss; layers see (batch, tokens, features)."""

    def __init__(self, d_in: int = 5, hidden: int = 4, d_out: int = 3, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.first = nn.Linear(d_in, hidden)
        self.second = nn.Linear(hidden, d_out)
        self.to(torch.float64)

    def forward(self, inputs, attention_mask=None, targets=None):
        hidden = torch.tanh(self.first(inputs))
        out = self.second(hidden)
        loss = None
        if targets is not None:
            mask = attention_mask.to(out.dtype)[..., None]
            loss = ((out - targets) ** 2 * mask).sum() / mask.sum()
        return SimpleNamespace(loss=loss, hidden=hidden)


def test_activation_equals_hand_computation(toy_batches):
    model, batches = ToyNet(), toy_batches()
    layers = find_target_layers(model)
    diagonals = activation_diagonals(model, layers, batches, progress=False)
    first_sum, second_sum, count = torch.zeros(5, dtype=torch.float64), torch.zeros(4, dtype=torch.float64), 0
    with torch.no_grad():
        for b in batches:
            keep = b["attention_mask"].bool()
            x = b["inputs"][keep]  # (tokens kept, 5)
            h = torch.tanh(x @ model.first.weight.T + model.first.bias)
            first_sum += (x**2).sum(0)
            second_sum += (h**2).sum(0)
            count += int(keep.sum())
    torch.testing.assert_close(diagonals["first"], 2 * first_sum / count)
    torch.testing.assert_close(diagonals["second"], 2 * second_sum / count)


def test_activation_sums_a_float64_model_in_float64():
    """Inputs 1e8 + k: float32 holds no integer above 2^24 exactly, so every channel would read 1e8 there."""
    model = ToyNet()
    offsets = torch.arange(2 * 3 * 5, dtype=torch.float64).reshape(2, 3, 5) % 7  # 0..6 per entry
    inputs = 1e8 + offsets
    batch = {"inputs": inputs, "attention_mask": torch.ones(2, 3, dtype=torch.long)}
    diagonals = activation_diagonals(model, find_target_layers(model), [batch], progress=False)
    # h_j = (2/N) * sum_n (1e8 + k_n)^2 = (2/N) * sum_n (1e16 + 2e8 * k_n + k_n^2), N = 6 tokens
    rows = offsets.reshape(-1, 5)
    expected = (2 / 6) * (6 * 1e16 + 2e8 * rows.sum(0) + (rows**2).sum(0))
    assert diagonals["first"].dtype == torch.float64
    torch.testing.assert_close(diagonals["first"], expected, rtol=1e-15, atol=0)
    assert len(set(diagonals["first"].tolist())) == len(set(expected.tolist())) > 1  # channels stay apart


def _exact_hessian(model: nn.Module, weight_names: list[str], batch) -> torch.Tensor:
    """Full Hessian of the batch loss w.r.t. the named weights, flattened in that order, by torch.func.hessian."""
    fixed = {k: v.detach() for k, v in model.named_parameters()}
    shapes = [fixed[name].shape for name in weight_names]
    sizes = [shape.numel() for shape in shapes]

    def loss_of(flat):
        parts = flat.split(sizes)
        weights = {name: part.reshape(shape) for name, part, shape in zip(weight_names, parts, shapes, strict=True)}
        return functional_call(model, {**fixed, **weights}, kwargs=batch).loss

    return hessian(loss_of)(torch.cat([fixed[name].reshape(-1) for name in weight_names]))


def _exact_hessians(model: ToyNet, batches) -> list[torch.Tensor]:
    """Full Hessian of each batch's loss w.r.t. both weights (flattened, 32 x 32)."""
    return [_exact_hessian(model, ["first.weight", "second.weight"], b) for b in batches]


def test_hutchinson_converges_to_exact_hessian_diagonal(one_thread, toy_batches):
    """Within 5 standard errors of diag(H), the standard error following from the exact off-diagonals."""
    model, batches = ToyNet(), toy_batches(count=2)
    layers = find_target_layers(model)
    hessians = _exact_hessians(model, batches)
    exact = torch.stack([h.diagonal() for h in hessians]).mean(0)
    num_probes = 400
    # Var of z_i (Hz)_i is sum_{j != i} H_ij^2; probes are independent across batches.
    off_diagonal = torch.stack([(h**2).sum(1) - h.diagonal() ** 2 for h in hessians]).sum(0)
    standard_error = (off_diagonal / (len(batches) ** 2 * num_probes)).sqrt()
    estimate = hutchinson_diagonals(model, layers, batches, num_probes=num_probes, seed=0, progress=False)
    flat_estimate = torch.cat([estimate["first"], estimate["second"]])
    assert ((flat_estimate - exact).abs() <= 5 * standard_error + 1e-12).all()
    assert standard_error.max() < 0.06 * exact.abs().max()  # the check has teeth
    varying = standard_error > 0  # entries with no off-diagonal coupling are exact
    z = (flat_estimate - exact)[varying] / standard_error[varying]
    assert varying.sum() >= 10 and (z**2).mean() < 3.0  # unclamped entries: z-scores close to standard normal
    again = hutchinson_diagonals(model, layers, batches, num_probes=num_probes, seed=0, progress=False)
    torch.testing.assert_close(again["first"], estimate["first"])  # seeded probes: reproducible


class PooledReluNet(nn.Module):
    """Linear 8->6->6->3 with ReLU, logits mean-pooled over the sequence, cross-entropy over 3 classes."""

    def __init__(self, seed: int = 5) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.first = nn.Linear(8, 6)
        self.second = nn.Linear(6, 6)
        self.third = nn.Linear(6, 3)
        self.to(torch.float64)

    def forward(self, inputs, labels):
        hidden = torch.relu(self.second(torch.relu(self.first(inputs))))
        logits = self.third(hidden).mean(1)
        return SimpleNamespace(loss=nn.functional.cross_entropy(logits, labels))


def pooled_batch(seed: int = 5) -> dict[str, torch.Tensor]:
    """One batch of 4 sequences of 5 tokens with 8 features, and a class per sequence."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(4, 5, 8, generator=generator, dtype=torch.float64)
    return {"inputs": inputs, "labels": torch.randint(0, 3, (4,), generator=generator)}


def test_hutchinson_trace_is_unbiased(one_thread):
    """The first layer's trace, averaged over independent runs, is within 4 standard errors of the exact trace.

    One run's estimate sum_i z_i (Hz)_i over the first layer's entries A has, per Rademacher probe, the
    variance 2 * sum_{i != j in A} H_ij^2 + sum_{i in A, j not in A} H_ij^2 (z spans all three layers).
    Averaging 50 runs of 40 probes keeps that standard error but exposes a bias of each run: clamping the
    negative entries before summing (the old rule) lands over 10 standard errors too high.
    """
    model, batch = PooledReluNet(), pooled_batch()
    layers = find_target_layers(model)
    assert [t.name for t in layers] == ["first", "second", "third"]
    hessian_matrix = _exact_hessian(model, [f"{t.name}.weight" for t in layers], batch)
    first = model.first.weight.numel()
    block = hessian_matrix[:first, :first]
    exact_trace = block.diagonal().sum()
    per_probe_variance = (
        2 * ((block**2).sum() - (block.diagonal() ** 2).sum()) + (hessian_matrix[:first, first:] ** 2).sum()
    )
    runs, num_probes = 50, 40
    standard_error = (per_probe_variance / (runs * num_probes)).sqrt()
    assert standard_error < exact_trace / 4  # the check has teeth: a trace off by half of itself fails
    traces = [
        hutchinson_diagonals(model, layers, [batch], num_probes=num_probes, seed=seed, progress=False)["first"].sum()
        for seed in range(runs)
    ]
    mean_trace = torch.stack(traces).mean()
    assert abs(mean_trace - exact_trace) <= 4 * standard_error, (float(mean_trace), float(exact_trace))


def test_hutchinson_local_metrics_use_clamped_entries():
    """Trace: the unclamped sum (0 if negative); top-k and effective rank: the entries clamped at 0 (numpy)."""
    model, batch = PooledReluNet(), pooled_batch()
    layers = find_target_layers(model)
    raw = hutchinson_diagonals(model, layers, [batch], num_probes=1, seed=7, progress=False)
    reported = estimate_sensitivity(model, [batch], estimator="hutchinson", num_probes=1, seed=7, progress=False)
    negative_totals = 0
    for name, diagonal in raw.items():
        values = diagonal.double().numpy()
        clamped = np.sort(np.clip(values, 0.0, None))[::-1]
        k = max(1, int(values.size * 0.5))
        shares = np.cumsum(clamped) / clamped.sum()
        item = reported[name]
        assert item.trace == pytest.approx(max(0.0, values.sum()))
        assert item.topk == pytest.approx(clamped[:k].mean())
        assert item.effective_rank == int(np.flatnonzero(shares >= 0.85 - 1e-12)[0]) + 1
        assert item.clamped_fraction == pytest.approx(np.mean(values < 0))
        assert item.num_entries == values.size
        negative_totals += values.sum() < 0
    assert min(item.clamped_fraction for item in reported.values()) > 0  # one probe: many negative entries
    assert negative_totals >= 1  # and at least one module total below 0, reported as trace 0


def _explicit_squared_gradients(model: ToyNet, pieces):
    params = [model.first.weight, model.second.weight]
    sums = [torch.zeros_like(p) for p in params]
    for piece in pieces:
        grads = torch.autograd.grad(model(**piece).loss, params)
        for s, g in zip(sums, grads, strict=True):
            s += g**2
    return {"first": (sums[0] / len(pieces)).reshape(-1), "second": (sums[1] / len(pieces)).reshape(-1)}


def test_fisher_per_example_equals_explicit_loop(toy_batches):
    model, batches = ToyNet(), toy_batches()
    singles = [{k: v[i : i + 1] for k, v in b.items()} for b in batches for i in range(4)]
    reference = _explicit_squared_gradients(model, singles)
    estimate = fisher_diagonals(model, find_target_layers(model), batches, per_example=True, progress=False)
    for name in reference:
        torch.testing.assert_close(estimate[name], reference[name])


def test_fisher_batch_mode_equals_explicit_loop(toy_batches):
    model, batches = ToyNet(), toy_batches()
    reference = _explicit_squared_gradients(model, batches)
    estimate = fisher_diagonals(model, find_target_layers(model), batches, per_example=False, progress=False)
    for name in reference:
        torch.testing.assert_close(estimate[name], reference[name])


def test_activation_on_tiny_bert_matches_captured_inputs(tiny_bert, token_batches, captured_inputs_reference):
    model, batches = tiny_bert(), token_batches(count=3)
    reference = captured_inputs_reference(model, batches)
    layers = find_target_layers(model)
    assert "classifier" not in {t.name for t in layers} and "bert.pooler.dense" in {t.name for t in layers}
    diagonals = activation_diagonals(model, layers, batches, progress=False)
    for layer in layers:
        torch.testing.assert_close(diagonals[layer.name], reference[layer.name], rtol=1e-5, atol=1e-8)
    sensitivities = estimate_sensitivity(model, batches, progress=False)
    q = sensitivities["bert.encoder.layer.0.attention.self.query"]
    k = sensitivities["bert.encoder.layer.0.attention.self.key"]
    assert (q.trace, q.topk, q.effective_rank) == (k.trace, k.topk, k.effective_rank)  # same input


@pytest.mark.parametrize("estimator", ["activation", "fisher", "hutchinson"])
def test_estimators_run_on_llama_and_gpt2(estimator, tiny_llama, tiny_gpt2, token_batches):
    llama = tiny_llama()
    result = estimate_sensitivity(llama, token_batches(labels="lm"), estimator=estimator, num_probes=1, progress=False)
    assert "lm_head" not in result
    assert len(result) == 2 * 7  # q, k, v, o, gate, up, down per layer
    down = result["model.layers.0.mlp.down_proj"]
    assert (down.d_in, down.d_out) == (48, 32)
    gpt2 = tiny_gpt2()
    result = estimate_sensitivity(gpt2, token_batches(labels="lm"), estimator=estimator, num_probes=1, progress=False)
    c_attn = result["transformer.h.0.attn.c_attn"]  # Conv1D: weight stored as (in, out)
    assert (c_attn.d_in, c_attn.d_out) == (32, 96)
    expected_entries = 32 if estimator == "activation" else 32 * 96
    assert c_attn.num_entries == expected_entries
    assert all(s.trace >= 0 and s.trace == s.trace for s in result.values())


def _snapshot(model: nn.Module):
    return (
        {name: m.training for name, m in model.named_modules()},
        {name: p.requires_grad for name, p in model.named_parameters()},
        {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()},
        {name: p.detach().clone() for name, p in model.named_parameters()},
        sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules()),
        sum(len(getattr(p, "_post_accumulate_grad_hooks", None) or {}) for p in model.parameters()),
    )


def _assert_same_state(before, after):
    assert before[0] == after[0] and before[1] == after[1]
    for name, grad in before[2].items():
        assert (grad is None and after[2][name] is None) or torch.equal(grad, after[2][name]), name
    for name, value in before[3].items():
        assert torch.equal(value, after[3][name]), name
    assert before[4:] == after[4:]


@pytest.mark.parametrize("estimator", ["activation", "fisher", "hutchinson"])
def test_model_left_as_found_also_on_error(estimator, tiny_bert, token_batches):
    model = tiny_bert()
    model.train()
    model.bert.embeddings.requires_grad_(False)
    model.classifier.weight.grad = torch.ones_like(model.classifier.weight)
    before = _snapshot(model)
    estimate_sensitivity(model, token_batches(labels="class"), estimator=estimator, num_probes=1, progress=False)
    _assert_same_state(before, _snapshot(model))
    bad = token_batches(labels="class")
    bad[1]["input_ids"] = bad[1]["input_ids"].float()  # embedding lookup fails mid-run
    with pytest.raises((RuntimeError, ValueError, IndexError)):
        estimate_sensitivity(model, bad, estimator=estimator, num_probes=1, progress=False)
    _assert_same_state(before, _snapshot(model))


def test_bad_input_is_rejected(tiny_bert, token_batches):
    model = tiny_bert()
    with pytest.raises(ValueError, match="empty"):
        estimate_sensitivity(model, [], progress=False)
    with pytest.raises(ValueError, match="match no"):
        estimate_sensitivity(model, token_batches(), target_modules=["nonexistent"], progress=False)
    with pytest.raises(ValueError, match="regex"):
        estimate_sensitivity(model, token_batches(), target_modules=r"nothing\.here", progress=False)
    with pytest.raises(ValueError, match="unknown estimator"):
        estimate_sensitivity(model, token_batches(), estimator="oracle", progress=False)
    for estimator in ("fisher", "hutchinson"):
        with pytest.raises(ValueError, match="labels"):
            estimate_sensitivity(model, token_batches(), estimator=estimator, progress=False)
    with pytest.raises(ValueError, match="no nn.Linear"):
        estimate_sensitivity(nn.Sequential(nn.ReLU()), token_batches(), progress=False)
    with pytest.raises(ValueError, match="num_probes"):
        estimate_sensitivity(model, token_batches(labels="class"), estimator="hutchinson", num_probes=0)


def test_nan_activations_name_the_module(tiny_bert, token_batches):
    model = tiny_bert()
    with torch.no_grad():
        model.bert.encoder.layer[1].intermediate.dense.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"bert\.encoder\.layer\.1\.output\.dense"):
        estimate_sensitivity(model, token_batches(), target_modules=["output.dense"], progress=False)
    with pytest.raises(ValueError, match="not finite|NaN"):
        estimate_sensitivity(model, token_batches(labels="class"), estimator="fisher", progress=False)


def test_target_selection_forms(tiny_bert):
    model = tiny_bert()
    by_suffix = [t.name for t in find_target_layers(model, ["query", "value"])]
    assert by_suffix == [f"bert.encoder.layer.{i}.attention.self.{m}" for i in range(2) for m in ("query", "value")]
    by_regex = [t.name for t in find_target_layers(model, r".*layer\.1\..*dense")]
    assert by_regex == [
        "bert.encoder.layer.1.attention.output.dense",
        "bert.encoder.layer.1.intermediate.dense",
        "bert.encoder.layer.1.output.dense",
    ]
    full = find_target_layers(model, ["bert.pooler.dense"])
    assert [t.name for t in full] == ["bert.pooler.dense"]


def test_padding_never_counts(tiny_bert, token_batches):
    model = tiny_bert()
    batches = token_batches(count=2)
    padded = []
    for b in batches:  # append 5 padding positions holding arbitrary token ids
        extra = torch.randint(1, 100, (b["input_ids"].shape[0], 5))
        padded.append(
            {
                "input_ids": torch.cat([b["input_ids"], extra], 1),
                "attention_mask": torch.cat([b["attention_mask"], torch.zeros_like(extra)], 1),
            }
        )
    layers = find_target_layers(model, ["query", "output.dense"])
    plain = activation_diagonals(model, layers, batches, progress=False)
    more = activation_diagonals(model, layers, padded, progress=False)
    for name in plain:
        torch.testing.assert_close(plain[name], more[name], rtol=1e-4, atol=1e-7)
