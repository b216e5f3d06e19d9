"""Shared fixtures: tiny randomly initialised models built from configs, and batches for them."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

VOCAB = 100


def tiny_bert(num_labels: int = 2, seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=num_labels,
    )
    return BertForSequenceClassification(config).eval()


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    return GPT2LMHeadModel(config).eval()


def token_batches(
    count: int = 3, batch: int = 4, length: int = 10, *, labels: str | None = None, seed: int = 0
) -> list[dict[str, torch.Tensor]]:
    """Random token batches with right padding of random lengths; labels "class" or "lm" or None."""
    generator = torch.Generator().manual_seed(seed)
    result = []
    for _ in range(count):
        input_ids = torch.randint(1, VOCAB, (batch, length), generator=generator)
        lengths = torch.randint(2, length + 1, (batch,), generator=generator)
        lengths[0] = length  # at least one full row
        mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
        input_ids = input_ids * mask
        item = {"input_ids": input_ids, "attention_mask": mask}
        if labels == "class":
            item["labels"] = torch.randint(0, 2, (batch,), generator=generator)
        elif labels == "lm":
            item["labels"] = input_ids.masked_fill(mask == 0, -100)
        result.append(item)
    return result


@pytest.fixture
def bert() -> BertForSequenceClassification:
    return tiny_bert()


@pytest.fixture
def llama() -> LlamaForCausalLM:
    return tiny_llama()


@pytest.fixture
def gpt2() -> GPT2LMHeadModel:
    return tiny_gpt2()
