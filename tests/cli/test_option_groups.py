"""The run configuration: option groups with one set of defaults, flags derived from them, self-validation."""

from __future__ import annotations

from dataclasses import fields

import pytest

from senslora.cli import build_parser
from senslora.cli.commands import resolve_config
from senslora.finetune.config import (
    OPTION_GROUPS,
    AdapterOptions,
    AllocationOptions,
    CalibrationOptions,
    DataOptions,
    EvaluationOptions,
    RunConfig,
    RunOptions,
)
from senslora.finetune.training.settings import TrainingConfig


def _defaults(cls) -> dict:
    return {name: value for name, value in vars(cls()).items()}


def test_groups_partition_the_run_options_in_order():
    """Every RunConfig field is declared in exactly one group, and RunConfig lists them group by group."""
    declared = [item.name for group in OPTION_GROUPS for item in fields(group)]
    assert len(declared) == len(set(declared))
    assert declared == [item.name for item in fields(RunConfig)]


def test_python_and_the_command_line_share_one_set_of_defaults():
    """TrainingConfig() on its own, RunConfig() and `senslora finetune` with no flags agree on every value."""
    run = _defaults(RunConfig)
    for group in OPTION_GROUPS:
        for name, value in _defaults(group).items():
            assert run[name] == value, name
    training = TrainingConfig()
    assert (training.epochs, training.learning_rate) == (2, 1e-3)  # the main job's, not a second set
    parsed = resolve_config(build_parser().parse_args(["finetune"]))
    assert parsed.to_dict() == RunConfig().to_dict()


def test_finetune_flags_come_from_the_groups_under_their_headings():
    parser = build_parser()
    finetune = parser._subparsers._group_actions[0].choices["finetune"]
    headings = {group.title: group for group in finetune._action_groups}
    expected = {
        "data options": DataOptions,
        "calibration options": CalibrationOptions,
        "allocation options": AllocationOptions,
        "adapter options": AdapterOptions,
        "training options": TrainingConfig,
        "evaluation options": EvaluationOptions,
        "run options": RunOptions,
    }
    for title, group in expected.items():
        shown = [action.dest for action in headings[title]._group_actions]
        wanted = [item.name for item in fields(group) if item.metadata.get("flag", True)]
        assert shown == wanted, title
    assert "trainer_arguments" not in {a.dest for a in finetune._actions}  # config file only


@pytest.mark.parametrize(
    ("group", "values", "message"),
    [
        (DataOptions, {"max_length": 1}, "max_length must be >= 2"),
        (DataOptions, {"text_column": "a", "label_column": "a"}, "both name column 'a'"),
        (CalibrationOptions, {"num_probes": 0}, "num_probes must be >= 1"),
        (CalibrationOptions, {"head_warmup_learning_rate": 0.0}, "head_warmup_learning_rate must be a positive"),
        (AllocationOptions, {"avg_rank": 2, "min_rank": 3}, "min_rank 3 exceeds avg_rank 2"),
        (AdapterOptions, {"method": "lora", "ranks": "ranks.json"}, "ranks applies to method senslora only"),
        (TrainingConfig, {"epochs": 0}, "epochs must be an integer >= 1"),
        (EvaluationOptions, {"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
        (RunOptions, {"overwrite": True, "resume": True}, "exclude each other"),
    ],
)
def test_each_group_validates_its_own_options(group, values, message):
    with pytest.raises(ValueError, match=message):
        group(**values).validate()
    with pytest.raises(ValueError, match=message):  # and RunConfig runs every group's checks
        RunConfig(**values).validate()
    group().validate()  # the defaults pass


def test_head_warmup_learning_rate_defaults_to_the_training_rate():
    assert RunConfig(learning_rate=2e-2).warmup_learning_rate == 2e-2
    assert RunConfig(learning_rate=2e-2, head_warmup_learning_rate=5e-3).warmup_learning_rate == 5e-3


def test_type_errors_name_the_option():
    with pytest.raises(ValueError, match="avg_rank must be an integer"):
        RunConfig(avg_rank="4").validate()
    with pytest.raises(ValueError, match="scheduler: 'steep' is not allowed"):
        RunConfig(scheduler="steep").validate()
