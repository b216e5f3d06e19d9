"""Where a module sits in a model: its stack, its layer index and its type, read from its full name.

    bert.encoder.layer.3.attention.self.query  ->  stack "bert.encoder.layer", layer 3, type "query"
    model.layers.12.self_attn.q_proj           ->  stack "model.layers",       layer 12, type "q_proj"
    transformer.h.0.attn.c_attn                ->  stack "transformer.h",      layer 0, type "attn.c_attn"
    bert.pooler.dense                          ->  no stack, no layer,                type "pooler.dense"

The layer index is the first purely numeric part of the name that has something after it; the type is
what follows it. Known suffixes are shortened where the short form stays distinct within a layer
(`attention.output.dense` -> `attention.output`, `output.dense` -> `output`); GPT-2's `attn.c_proj` and
`mlp.c_proj` keep their prefix because `c_proj` alone would merge them. Anything else keeps its whole
suffix, so two different modules of one layer never share a type. Names without a layer index lose only
a leading model-root part (`bert.`, `model.`, `transformer.`, PEFT's `base_model.model.`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Suffix after the layer index -> short type. Each group lists one architecture family's modules;
# within a family the short names are distinct.
_SHORT_TYPES: dict[str, str] = {
    # BERT, RoBERTa, ELECTRA, XLM-R, MiniLM (and DeBERTa-v2's *_proj)
    "attention.self.query": "query",
    "attention.self.key": "key",
    "attention.self.value": "value",
    "attention.self.query_proj": "query_proj",
    "attention.self.key_proj": "key_proj",
    "attention.self.value_proj": "value_proj",
    "attention.output.dense": "attention.output",
    "intermediate.dense": "intermediate",
    "output.dense": "output",
    # ViT
    "attention.attention.query": "query",
    "attention.attention.key": "key",
    "attention.attention.value": "value",
    # DistilBERT
    "attention.q_lin": "q_lin",
    "attention.k_lin": "k_lin",
    "attention.v_lin": "v_lin",
    "attention.out_lin": "out_lin",
    "ffn.lin1": "lin1",
    "ffn.lin2": "lin2",
    # Llama, Mistral, Qwen, Gemma, Phi-3, OPT, BART (self-attention only: cross-attention keeps its prefix)
    "self_attn.q_proj": "q_proj",
    "self_attn.k_proj": "k_proj",
    "self_attn.v_proj": "v_proj",
    "self_attn.o_proj": "o_proj",
    "self_attn.out_proj": "out_proj",
    "self_attn.qkv_proj": "qkv_proj",
    "mlp.gate_proj": "gate_proj",
    "mlp.up_proj": "up_proj",
    "mlp.down_proj": "down_proj",
    "mlp.gate_up_proj": "gate_up_proj",
}

# T5 puts a numbered sub-layer between the block and the module (`layer.0.SelfAttention.q`); the
# sub-layer number only repeats what the block name says.
_T5_SUBLAYER = re.compile(r"^layer\.\d+\.(SelfAttention|EncDecAttention|DenseReluDense)\.(.+)$")

# Leading parts of unindexed names that only say which model class holds them.
_MODEL_ROOTS = frozenset(
    {"model", "bert", "roberta", "xlm_roberta", "deberta", "distilbert", "electra", "albert", "transformer"}
)
_PEFT_PREFIX = ("base_model", "model")

# Display order of types: attention projections (query, key, value, fused, output), cross-attention,
# then the MLP (gate, up, down); anything unrecognised after that, alphabetically.
_ROLE_BY_LEAF: dict[str, int] = {
    **dict.fromkeys(("query", "q_proj", "q", "q_lin", "query_proj", "wq"), 0),
    **dict.fromkeys(("key", "k_proj", "k", "k_lin", "key_proj", "wk"), 1),
    **dict.fromkeys(("value", "v_proj", "v", "v_lin", "value_proj", "wv"), 2),
    **dict.fromkeys(("c_attn", "query_key_value", "qkv_proj", "qkv", "wqkv"), 3),
    **dict.fromkeys(("attention.output", "o_proj", "out_proj", "o", "out_lin", "attn.c_proj"), 4),
    **dict.fromkeys(("gate_proj", "wi_0", "w1", "gate_up_proj"), 10),
    **dict.fromkeys(("intermediate", "up_proj", "c_fc", "fc1", "lin1", "dense_h_to_4h", "wi", "wi_1", "w3"), 11),
    **dict.fromkeys(("output", "down_proj", "mlp.c_proj", "fc2", "lin2", "dense_4h_to_h", "wo", "w2"), 12),
}
_CROSS_ATTENTION_PARTS = ("encoder_attn", "EncDecAttention", "crossattention", "cross_attn")
_ATTENTION_PARTS = ("attn", "attention", "SelfAttention", "self_attention")
_UNKNOWN_ROLE = 20


@dataclass(frozen=True)
class ModulePosition:
    """Where a module sits in the model.

    Attributes:
        stack: the name part before the layer index ("" without one), e.g. "bert.encoder.layer".
        layer: the layer index, or None.
        module_type: the (possibly shortened) type, e.g. "query".
        suffix: the unshortened part after the layer index (the root-stripped name without one).
    """

    stack: str
    layer: int | None
    module_type: str
    suffix: str


def _shorten(suffix: str) -> str:
    if suffix in _SHORT_TYPES:
        return _SHORT_TYPES[suffix]
    match = _T5_SUBLAYER.match(suffix)
    if match:
        return f"{match.group(1)}.{match.group(2)}"
    return suffix


def _strip_root(parts: list[str]) -> list[str]:
    if tuple(parts[:2]) == _PEFT_PREFIX and len(parts) > 2:
        parts = parts[2:]
    if len(parts) > 1 and parts[0] in _MODEL_ROOTS:
        parts = parts[1:]
    return parts


def module_position(name: str) -> ModulePosition:
    """Stack, layer index and type of a module, from its full name (never raises for a string).

    Args:
        name: full module name as in `model.named_modules()`.

    Returns:
        ModulePosition; `layer` is None when no numeric part is followed by more of the name.
    """
    parts = [part for part in str(name).split(".") if part != ""]
    for index, part in enumerate(parts[:-1]):
        if part.isascii() and part.isdigit():
            suffix = ".".join(parts[index + 1 :])
            return ModulePosition(".".join(parts[:index]), int(part), _shorten(suffix), suffix)
    stripped = ".".join(_strip_root(parts)) or str(name)
    return ModulePosition("", None, stripped, stripped)


def infer_module_type(name: str) -> tuple[int | None, str]:
    """(layer index, module type) of a full module name; see the module docstring for the rules."""
    position = module_position(name)
    return position.layer, position.module_type


def module_type_sort_key(module_type: str) -> tuple[int, int, str]:
    """Sort key for displaying types: attention q, k, v, fused, output; cross-attention; MLP; the rest.

    Returns:
        (group, role, name): group 0 self-attention, 1 cross-attention, 2 MLP, 3 unrecognised.
    """
    parts = module_type.split(".")
    leaf = parts[-1]
    role = _ROLE_BY_LEAF.get(module_type, _ROLE_BY_LEAF.get(leaf))
    if leaf == "c_proj" and "mlp" not in parts:
        role = 4
    if leaf == "dense" and any(part in _ATTENTION_PARTS for part in parts[:-1]):
        role = 4
    if role is None:
        return (3, _UNKNOWN_ROLE, module_type)
    if any(part in _CROSS_ATTENTION_PARTS for part in parts):
        return (1, role, module_type)
    return (0 if role < 10 else 2, role, module_type)


def order_module_types(module_types: list[str] | set[str] | tuple[str, ...]) -> list[str]:
    """Distinct types in display order (attention first, then MLP, then the rest by name)."""
    return sorted(set(module_types), key=module_type_sort_key)
