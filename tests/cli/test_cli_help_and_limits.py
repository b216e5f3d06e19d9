"""`--help` shows each option's default once, and that default is RunConfig's; `--max-length` is refused
beyond the positions of every model family, learned position tables and rotary positions alike."""

from __future__ import annotations

import argparse
import re
from dataclasses import fields

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from senslora.cli import build_parser
from senslora.finetune.config import RunConfig
from senslora.finetune.models import check_max_length
from senslora.finetune.options import flag_names

DEFAULT_SHOWN = re.compile(r"\(default: (?P<value>[^()]*)\)$")


def subcommand_parsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(subparsers.choices)


def option_helps(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.Action, str]]:
    """{dest: (action, help text as --help prints it, on one line)}."""
    formatter = parser._get_formatter()
    return {
        action.dest: (action, " ".join(formatter._expand_help(action).split()))
        for action in parser._actions
        if action.help and action.help != argparse.SUPPRESS and action.option_strings
    }


def test_no_option_shows_its_default_twice():
    for command, parser in subcommand_parsers().items():
        for dest, (_, text) in option_helps(parser).items():
            assert len(re.findall(r"\bdefault\b", text)) <= 1, f"{command} --{dest}: {text}"


def test_defaults_shown_are_runconfig_defaults():
    """A default shown as a value parses back (through the real parser) to RunConfig's default; a default
    described in words belongs to an option whose RunConfig default is None (decided at run time), or names
    the value."""
    parser = build_parser()
    helps = option_helps(subcommand_parsers()["finetune"])
    defaults = RunConfig()
    checked = 0
    with_flags = flag_names(RunConfig)
    for item in fields(RunConfig):
        if item.name not in with_flags:  # trainer_arguments: config file only
            assert item.name not in helps
            continue
        action, text = helps[item.name]
        default = getattr(defaults, item.name)
        own_words = item.metadata["help"]
        if "default" in own_words:
            assert DEFAULT_SHOWN.search(text) is None or DEFAULT_SHOWN.search(own_words), text
            written = f"{default:g}" if isinstance(default, float) else str(default)
            assert default is None or written in own_words, f"--{item.name}: {text} vs {default!r}"
            continue
        shown = DEFAULT_SHOWN.search(text)
        assert shown, f"--{item.name} shows no default: {text}"
        value = shown.group("value")
        if isinstance(action, argparse.BooleanOptionalAction):
            assert value.lower() == str(default).lower(), f"--{item.name}: {value} vs {default}"
        else:
            flag = action.option_strings[0]
            parsed = parser.parse_args(["finetune", flag, *value.split()])
            assert getattr(parsed, item.name) == default, f"--{item.name}: shown {value!r}, default {default!r}"
        checked += 1
    assert checked > 40


def test_finetune_help_of_inferred_task_reads_once(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["finetune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "task (default: inferred)" in text and "(default: inferred) (default: None)" not in text


def tiny_llama(limit: int, head: str = "lm") -> torch.nn.Module:
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=limit,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config) if head == "lm" else LlamaForSequenceClassification(config)


def tiny_gpt2(limit: int) -> torch.nn.Module:
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=limit))


def tiny_bert(limit: int) -> torch.nn.Module:
    config = BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=limit,
    )
    return BertForSequenceClassification(config)


def tiny_roberta(positions: int) -> torch.nn.Module:
    config = RobertaConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=positions,
        pad_token_id=1,
    )
    return RobertaForSequenceClassification(config)


@pytest.mark.parametrize(
    ("build", "limit"),
    [
        (lambda: tiny_llama(96), 96),  # rotary positions: the limit is max_position_embeddings
        (lambda: tiny_llama(96, head="classification"), 96),
        (lambda: tiny_gpt2(80), 80),  # learned table wpe, n_positions
        (lambda: tiny_bert(72), 72),  # learned table position_embeddings, max_position_embeddings
        (lambda: tiny_roberta(66), 64),  # positions start after the padding index 1: 66 - 2
    ],
    ids=["llama-causal-lm", "llama-classification", "gpt2", "bert", "roberta"],
)
def test_max_length_beyond_the_position_limit_is_refused(build, limit):
    torch.manual_seed(0)
    model = build()
    check_max_length(model, limit)  # the limit itself is allowed
    with pytest.raises(ValueError, match=rf"^max_length {limit + 1} exceeds the {limit} positions .*use <= {limit}$"):
        check_max_length(model, limit + 1)
    with pytest.raises(ValueError, match=rf"max_length 100000 exceeds the {limit} positions"):
        check_max_length(model, 100_000)


@pytest.mark.slow
def test_smollm2_refuses_max_length_beyond_8192():
    """The real SmolLM2-135M (Llama architecture, rotary positions, trained for 8,192)."""
    from senslora.finetune.models import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer("smollm2", "causal_lm")
    check_max_length(model, 8192)
    with pytest.raises(ValueError, match="max_length 100000 exceeds the 8192 positions"):
        check_max_length(model, 100_000)
