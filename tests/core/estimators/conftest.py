"""Fixtures shared by the estimator tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn


def _captured_inputs_reference(model, batches):
    """Independent activation reference: clone every Linear input, mask by hand, sum squares."""
    captured: dict[str, list[torch.Tensor]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            handles.append(
                module.register_forward_hook(lambda m, a, o, name=name: captured.setdefault(name, []).append(a[0]))
            )
    sums, counts = {}, {}
    with torch.no_grad():
        for b in batches:
            captured.clear()
            model(**b)
            keep = b["attention_mask"].bool()
            for name, (x,) in captured.items():
                rows = x[keep] if x.dim() == 3 else x  # the pooler sees one row per example
                sums[name] = sums.get(name, 0) + (rows.double() ** 2).sum(0)
                counts[name] = counts.get(name, 0) + rows.shape[0]
    for h in handles:
        h.remove()
    return {name: 2 * sums[name] / counts[name] for name in sums}


@pytest.fixture(scope="session")
def captured_inputs_reference():
    """Factory: captured_inputs_reference(model, batches) -> {Linear name: 2 * mean of its squared inputs}."""
    return _captured_inputs_reference


@pytest.fixture
def toy_batches():
    """`toy_batches(count, batch, tokens, seed)`: float64 batches for the toy networks of the estimator
    tests (inputs of width 5, regression targets of width 3, two rows partly padded)."""

    def build(count: int = 3, batch: int = 4, tokens: int = 5, seed: int = 0) -> list[dict]:
        generator = torch.Generator().manual_seed(seed)
        result = []
        for _ in range(count):
            mask = torch.ones(batch, tokens, dtype=torch.long)
            mask[1, 3:] = 0
            mask[2, 1:] = 0
            result.append(
                {
                    "inputs": torch.randn(batch, tokens, 5, generator=generator, dtype=torch.float64),
                    "attention_mask": mask,
                    "targets": torch.randn(batch, tokens, 3, generator=generator, dtype=torch.float64),
                }
            )
        return result

    return build
