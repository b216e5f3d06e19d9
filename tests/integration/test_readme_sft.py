"""The README's `allocate_lora_config` + TRL SFTTrainer block, run as written on a tiny Llama."""

from __future__ import annotations

import re
from pathlib import Path

import datasets

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_block(heading: str) -> str:
    """The first ```python block after `heading` in the README."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index(heading) :]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_readme_sft_trainer_block_trains_with_the_allocated_ranks(
    tiny_llama, tiny_decoder_tokenizer, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    tokenizer = tiny_decoder_tokenizer()
    model = tiny_llama()
    model.config.pad_token_id = tokenizer.pad_token_id
    rows = [
        {"prompt": "was the movie good", "completion": "the movie was very good"},
        {"prompt": "was the plot fun", "completion": "the plot was not fun"},
    ] * 8
    namespace = {
        "model": model,
        "tokenizer": tokenizer,
        "dataset": datasets.Dataset.from_list(rows),
        "texts": [row["prompt"] + " " + row["completion"] for row in rows],
    }
    exec(readme_block("### Keeping your own LoraConfig"), namespace)
    trainer, lora_config = namespace["trainer"], namespace["lora_config"]
    assert trainer.state.global_step > 0
    ranks = {
        name.removeprefix("base_model.model."): module.r["default"]
        for name, module in trainer.model.named_modules()
        if hasattr(module, "r") and isinstance(module.r, dict) and "default" in module.r
    }
    # every Linear but lm_head, each with its allocated rank (ranks differ: not PEFT's uniform r)
    assert len(ranks) == 14 and ranks == {name: rank for name, rank in lora_config.rank_pattern.items()}
    assert len(set(ranks.values())) > 1
