"""What --calibration-examples counts on causal_lm data: blocks of max_length tokens, or whole texts.

The reference blocks are cut by hand from the sampled texts: each text's token ids and eos, concatenated,
in pieces of exactly max_length tokens (the remainder dropped).
"""

from __future__ import annotations

import random

import pytest
from transformers import AutoTokenizer

from senslora.finetune.config import RunConfig
from senslora.finetune.preparation import calibration_batches, load_calibration_data, prepare

MAX_LENGTH = 8


def _words(model_dir) -> list[str]:
    """The tiny tokenizer's words: one token each."""
    return sorted(w for w in AutoTokenizer.from_pretrained(model_dir).get_vocab() if not w.startswith("<"))


@pytest.fixture(scope="module")
def long_texts(tiny_llama_dir, tmp_path_factory):
    """40 lines of 30 words: each line is about four blocks of 8 tokens."""
    words = _words(tiny_llama_dir)
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("calibration") / "long.txt"
    path.write_text("\n".join(" ".join(rng.choice(words) for _ in range(30)) for _ in range(40)) + "\n")
    return path


def _config(model_dir, data, **overrides) -> RunConfig:
    settings = dict(model=str(model_dir), data=str(data), max_length=MAX_LENGTH, calibration_examples=6)
    settings |= dict(calibration_batch_size=4, progress=False)
    return RunConfig(**(settings | overrides))


def _calibration_rows(config: RunConfig) -> tuple[list[list[int]], list[list[int]]]:
    """(the rows of the calibration batches, every block the sampled texts make, cut by hand)."""
    prepared = prepare(config)
    texts = load_calibration_data(config, prepared.data)
    rows = [row.tolist() for batch in calibration_batches(config, prepared, texts) for row in batch["input_ids"]]
    tokenizer = prepared.tokenizer
    stream = [
        token
        for text in texts["text"]
        for token in [*tokenizer(text, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    ]
    blocks = [stream[start : start + MAX_LENGTH] for start in range(0, len(stream) - MAX_LENGTH + 1, MAX_LENGTH)]
    return rows, blocks


def test_texts_unit_keeps_every_block_of_the_sampled_texts(tiny_llama_dir, long_texts):
    rows, blocks = _calibration_rows(_config(tiny_llama_dir, long_texts, calibration_unit="texts"))
    assert len(blocks) > 6 * 3  # six texts of 31 tokens make 23 blocks of 8
    assert rows == blocks


def test_blocks_unit_keeps_a_seeded_sample_of_that_many_blocks_in_order(tiny_llama_dir, long_texts):
    rows, blocks = _calibration_rows(_config(tiny_llama_dir, long_texts, seed=1))
    assert len(rows) == 6 and all(len(row) == MAX_LENGTH for row in rows)
    positions = [blocks.index(row) for row in rows]
    assert positions == sorted(set(positions))  # distinct blocks, in the order the texts make them
    again, _ = _calibration_rows(_config(tiny_llama_dir, long_texts, seed=1))
    other, _ = _calibration_rows(_config(tiny_llama_dir, long_texts, seed=2))
    assert again == rows and other != rows


def test_blocks_unit_keeps_every_block_when_the_texts_make_fewer(tiny_llama_dir, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("\n".join(f"the {word} film" for word in _words(tiny_llama_dir)) + "\n")  # 19 texts: 9 blocks
    rows, blocks = _calibration_rows(_config(tiny_llama_dir, short, calibration_examples=12, validation_fraction=0.05))
    assert 0 < len(blocks) < 12 and rows == blocks


def test_the_unit_does_not_change_labelled_calibration(tiny_bert_dir, sentiment_csv):
    def rows(unit: str) -> list[list[int]]:
        config = _config(tiny_bert_dir, sentiment_csv, calibration_unit=unit, max_length=16)
        prepared = prepare(config)
        texts = load_calibration_data(config, prepared.data)
        return [row.tolist() for batch in calibration_batches(config, prepared, texts) for row in batch["input_ids"]]

    assert rows("blocks") == rows("texts") and len(rows("blocks")) == 6


def test_an_unknown_unit_is_refused():
    with pytest.raises(ValueError, match="calibration_unit"):
        RunConfig(model="minilm", data="rotten_tomatoes", calibration_unit="tokens").validate()
