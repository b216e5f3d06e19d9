"""A 4-bit quantized base (bitsandbytes NF4 layers, on the CPU): activation works, loss-based estimators refuse.

The activation estimator only hooks layer inputs, so it must equal the same independent captured-inputs
reference as on a full-precision model; fisher and hutchinson need gradients of the weights, which a
packed 4-bit weight does not have, and must say so in one line.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from senslora import allocate_ranks, estimate_sensitivity, find_target_layers
from senslora.core.estimators import activation_diagonals

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import bitsandbytes as bnb

VOCAB = 100  # the token_batches fixture draws token ids below 100


def small_bert() -> nn.Module:
    """A small BERT classifier whose widths are multiples of the 4-bit block size (64)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
        max_position_embeddings=64, num_labels=2,
    )  # fmt: skip
    return BertForSequenceClassification(config).eval()


def quantized_tiny_bert() -> nn.Module:
    """small_bert with every encoder and pooler Linear replaced by a bitsandbytes NF4 Linear4bit."""
    model = small_bert()
    for layer in find_target_layers(model):
        parent_name, _, child = layer.name.rpartition(".")
        linear = layer.module
        quantized = bnb.nn.Linear4bit(
            linear.in_features, linear.out_features, bias=linear.bias is not None, compute_dtype=torch.float32
        )
        quantized.weight = bnb.nn.Params4bit(linear.weight.data.clone(), requires_grad=False, quant_type="nf4")
        quantized.bias = nn.Parameter(linear.bias.data.clone(), requires_grad=False)
        setattr(model.get_submodule(parent_name), child, quantized.to("cpu"))  # .to() quantizes
    return model.eval()


def test_the_base_really_is_quantized(token_batches):
    model, batches = quantized_tiny_bert(), token_batches(count=1)
    query = model.bert.encoder.layer[0].attention.self.query
    assert isinstance(query, bnb.nn.Linear4bit) and query.weight.dtype == torch.uint8
    with torch.no_grad():
        difference = (model(**batches[0]).logits - small_bert()(**batches[0]).logits).abs().max()
    assert 0 < difference < 1  # 4-bit rounding changes the outputs a little


def test_activation_on_quantized_base_matches_captured_inputs(token_batches, captured_inputs_reference):
    model, batches = quantized_tiny_bert(), token_batches(count=3)
    reference = captured_inputs_reference(model, batches)
    layers = find_target_layers(model)
    assert len(layers) == 13 and all((t.d_in, t.d_out) == (t.module.in_features, t.module.out_features) for t in layers)
    diagonals = activation_diagonals(model, layers, batches, progress=False)
    for layer in layers:
        torch.testing.assert_close(diagonals[layer.name], reference[layer.name], rtol=1e-5, atol=1e-8)
    allocation = allocate_ranks(estimate_sensitivity(model, batches, progress=False), avg_rank=2)
    assert sum(allocation.ranks.values()) == 2 * 13


@pytest.mark.parametrize("estimator", ["fisher", "hutchinson"])
def test_loss_based_estimators_refuse_a_quantized_base(estimator, token_batches):
    model = quantized_tiny_bert()
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    with pytest.raises(ValueError, match="full-precision weights.*quantized torch.uint8 weight.*activation estimator"):
        estimate_sensitivity(model, token_batches(labels="class"), estimator=estimator, progress=False)
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags  # left as found
