"""Module type inference: layer index and module type from a module's name, and the order types are shown in."""

from __future__ import annotations

from senslora.core.module_types import infer_module_type, module_position, order_module_types

# The module name suffixes of one BERT layer.
BERT_SUFFIXES = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)


def test_bert_names():
    assert infer_module_type("bert.encoder.layer.3.attention.self.query") == (3, "query")
    assert infer_module_type("bert.encoder.layer.3.attention.self.key") == (3, "key")
    assert infer_module_type("bert.encoder.layer.3.attention.self.value") == (3, "value")
    assert infer_module_type("bert.encoder.layer.10.attention.output.dense") == (10, "attention.output")
    assert infer_module_type("bert.encoder.layer.10.intermediate.dense") == (10, "intermediate")
    assert infer_module_type("bert.encoder.layer.10.output.dense") == (10, "output")
    assert infer_module_type("bert.pooler.dense") == (None, "pooler.dense")
    assert infer_module_type("roberta.encoder.layer.0.attention.self.query") == (0, "query")
    assert infer_module_type("base_model.model.bert.pooler.dense") == (None, "pooler.dense")
    assert module_position("bert.encoder.layer.3.attention.self.query").stack == "bert.encoder.layer"


def test_llama_and_gpt2_names():
    assert infer_module_type("model.layers.12.self_attn.q_proj") == (12, "q_proj")
    assert infer_module_type("model.layers.0.self_attn.o_proj") == (0, "o_proj")
    assert infer_module_type("model.layers.29.mlp.down_proj") == (29, "down_proj")
    assert infer_module_type("transformer.h.0.attn.c_attn") == (0, "attn.c_attn")
    # c_proj exists in attention and MLP: the two must stay distinct
    assert infer_module_type("transformer.h.5.attn.c_proj") == (5, "attn.c_proj")
    assert infer_module_type("transformer.h.5.mlp.c_proj") == (5, "mlp.c_proj")


def test_odd_names_never_crash_and_stay_distinct():
    assert infer_module_type("classifier") == (None, "classifier")
    assert infer_module_type("0") == (None, "0")  # a trailing number is the module itself, not a layer
    assert infer_module_type("layers.5") == (None, "layers.5")
    assert infer_module_type("") == (None, "")
    assert infer_module_type("x.².y") == (None, "x.².y")
    assert infer_module_type("model.layers.0.block_sparse_moe.experts.3.w1") == (0, "block_sparse_moe.experts.3.w1")
    assert infer_module_type("net.blocks.2.mixer.in_proj") == (2, "mixer.in_proj")
    assert infer_module_type("encoder.block.1.layer.1.DenseReluDense.wi") == (1, "DenseReluDense.wi")
    # all module types of one BERT layer are distinct
    layer = [infer_module_type(f"bert.encoder.layer.0.{suffix}")[1] for suffix in BERT_SUFFIXES]
    assert len(set(layer)) == len(layer)


def test_type_display_order():
    bert = ["output", "pooler.dense", "intermediate", "value", "attention.output", "query", "key"]
    assert order_module_types(bert) == [
        "query",
        "key",
        "value",
        "attention.output",
        "intermediate",
        "output",
        "pooler.dense",
    ]
    llama = ["down_proj", "up_proj", "gate_proj", "o_proj", "v_proj", "k_proj", "q_proj", "mystery"]
    assert order_module_types(llama) == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
        "mystery",
    ]
    gpt2 = ["mlp.c_proj", "mlp.c_fc", "attn.c_proj", "attn.c_attn"]
    assert order_module_types(gpt2) == ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
