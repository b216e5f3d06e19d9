"""Which layers of a model get a LoRA adapter (and so a sensitivity score).

Eligible layers are `torch.nn.Linear` and `transformers`' GPT-2 style `Conv1D`. By default every
eligible layer is a target except output heads: the model's output embeddings (`lm_head`) and anything
under a module named like a task head (classifier, score, qa_outputs, ...), which are new or tied.
A user selection follows PEFT: a list of full names or name suffixes (`"query"` matches
`...attention.self.query`), or one regular expression matched against the whole name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn
from transformers.pytorch_utils import Conv1D

HEAD_NAMES = frozenset({"classifier", "lm_head", "score", "qa_outputs", "pre_classifier", "cls"})


@dataclass(frozen=True)
class TargetLayer:
    """An adaptable layer: its full name, the module, and its input/output feature counts."""

    name: str
    module: nn.Module
    d_in: int
    d_out: int

    @property
    def weight(self) -> nn.Parameter:
        return self.module.weight


def layer_shape(module: nn.Module) -> tuple[int, int] | None:
    """(d_in, d_out) of a Linear or Conv1D layer, None for anything else."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):
        d_in, d_out = module.weight.shape  # Conv1D stores the weight as (in, out)
        return int(d_in), int(d_out)
    return None


def _is_head(name: str, module: nn.Module, output_embeddings: nn.Module | None) -> bool:
    if output_embeddings is not None and module is output_embeddings:
        return True
    return any(part in HEAD_NAMES for part in name.split("."))


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or name.endswith("." + pattern)


def find_target_layers(model: nn.Module, target_modules: str | Sequence[str] | None = None) -> list[TargetLayer]:
    """Resolve the target layers of `model`, in `named_modules()` order.

    Args:
        model: any torch module, typically a `transformers` model.
        target_modules: None (every Linear/Conv1D except output heads), a list of full names or
            suffixes, or a single regular expression that must match the whole module name.

    Raises:
        ValueError: the model has no eligible layer, a name in the list matches no eligible layer,
            the regular expression matches none or is invalid.
    """
    get_output = getattr(model, "get_output_embeddings", None)
    try:
        output_embeddings = get_output() if callable(get_output) else None
    except (AttributeError, NotImplementedError):
        output_embeddings = None
    eligible = [
        TargetLayer(name, module, *shape)
        for name, module in model.named_modules()
        if (shape := layer_shape(module)) is not None
    ]
    if not eligible:
        raise ValueError("the model has no nn.Linear or Conv1D layer to adapt")

    if target_modules is None:
        chosen = [t for t in eligible if not _is_head(t.name, t.module, output_embeddings)]
        if not chosen:
            raise ValueError("the model has no eligible layer outside its output head")
        return chosen
    if isinstance(target_modules, str):
        try:
            regex = re.compile(target_modules)
        except re.error as error:
            raise ValueError(f"target_modules {target_modules!r} is not a valid regex: {error}") from None
        chosen = [t for t in eligible if regex.fullmatch(t.name)]
        if not chosen:
            raise ValueError(f"target_modules regex {target_modules!r} matches no Linear/Conv1D layer")
        return chosen
    patterns = list(target_modules)
    if not patterns:
        raise ValueError("target_modules is an empty list")
    unmatched = [p for p in patterns if not any(_matches(t.name, p) for t in eligible)]
    if unmatched:
        raise ValueError(f"target_modules {unmatched} match no Linear/Conv1D layer of the model")
    return [t for t in eligible if any(_matches(t.name, p) for p in patterns)]
