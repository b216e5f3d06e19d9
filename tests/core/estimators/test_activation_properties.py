"""Property-based: the activation estimator over random BERT shapes and padding patterns."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


@st.composite
def bert_and_batches(draw):
    heads = draw(st.sampled_from([1, 2, 4]))
    head_size = draw(st.sampled_from([2, 4, 8]))
    shape = {
        "hidden": heads * head_size,
        "heads": heads,
        "intermediate": draw(st.integers(3, 40)),
        "layers": draw(st.integers(1, 2)),
        "seed": draw(st.integers(0, 1000)),
    }
    batches = []
    for _ in range(draw(st.integers(1, 3))):
        size, length = draw(st.integers(1, 4)), draw(st.integers(2, 9))
        mask_rows = []
        for _ in range(size):
            pattern = draw(st.sampled_from(["right", "left", "holes"]))
            keep = draw(st.integers(1, length))
            if pattern == "right":
                row = [1] * keep + [0] * (length - keep)
            elif pattern == "left":
                row = [0] * (length - keep) + [1] * keep
            else:
                row = draw(st.lists(st.integers(0, 1), min_size=length, max_size=length))
                row[draw(st.integers(0, length - 1))] = 1  # at least one real token
            mask_rows.append(row)
        ids = draw(st.lists(st.integers(1, 99), min_size=size * length, max_size=size * length))
        batches.append((torch.tensor(ids).reshape(size, length), torch.tensor(mask_rows)))
    return shape, batches


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(bert_and_batches())
def test_activation_diagonals_match_a_hand_computation(example):
    """h = (2/N) sum_n x_n^2 over non-padding tokens, from each Linear's input captured by a separate hook."""
    from transformers import BertConfig, BertForSequenceClassification

    from senslora.core.estimators import activation_diagonals
    from senslora.core.targets import find_target_layers

    shape, raw_batches = example
    torch.manual_seed(shape["seed"])
    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=100,
            hidden_size=shape["hidden"],
            num_hidden_layers=shape["layers"],
            num_attention_heads=shape["heads"],
            intermediate_size=shape["intermediate"],
            max_position_embeddings=16,
        )
    ).eval()
    batches = [{"input_ids": ids * mask, "attention_mask": mask} for ids, mask in raw_batches]
    layers = find_target_layers(model)
    estimated = activation_diagonals(model, layers, batches, progress=False)

    sums = {layer.name: torch.zeros(layer.d_in, dtype=torch.float64) for layer in layers}
    rows = dict.fromkeys(sums, 0)
    current_mask = {}

    def capture(name, module, inputs):
        x = inputs[0].detach().double()
        if x.dim() == 3:  # (batch, tokens, d_in): keep the real tokens only
            x = x[current_mask["mask"].bool()]
        sums[name] += (x**2).sum(0)
        rows[name] += x.shape[0]

    handles = [layer.module.register_forward_pre_hook(lambda m, i, n=layer.name: capture(n, m, i)) for layer in layers]
    with torch.no_grad():
        for batch in batches:
            current_mask["mask"] = batch["attention_mask"]
            model(**batch)
    for handle in handles:
        handle.remove()
    assert set(estimated) == set(sums)
    real_tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    examples = sum(int(b["attention_mask"].shape[0]) for b in batches)
    for name, total in sums.items():
        assert rows[name] == (examples if name.endswith("pooler.dense") else real_tokens)
        torch.testing.assert_close(estimated[name], 2.0 * total / rows[name], rtol=1e-5, atol=1e-9)
    assert np.all([torch.isfinite(v).all() for v in estimated.values()])
