"""RunConfig and its config files: YAML numbers read as meant, wrong types refused in the Python API."""

from __future__ import annotations

import re

import pytest


def test_yaml_exponent_without_dot_is_a_number(tmp_path):
    """YAML 1.1 reads `1e-3` as a string; the config loader still takes it as the number it means."""
    from senslora.finetune.config import RunConfig
    from senslora.finetune.config_file import load_config_file

    path = tmp_path / "run.yaml"
    path.write_text("learning_rate: 1e-3\nweight_decay: 0\n")
    values = load_config_file(path)
    assert values == {"learning_rate": 0.001, "weight_decay": 0.0}
    RunConfig(**values).validate()


def test_python_api_rejects_wrong_types():
    from senslora.finetune.config import RunConfig

    for values, message in [
        ({"avg_rank": 2.5}, "avg_rank must be an integer"),
        ({"learning_rate": "fast"}, "learning_rate must be a number"),
        ({"overwrite": "yes"}, "overwrite must be true or false"),
        ({"target_modules": "query"}, "target_modules must be a list"),
        ({"model": None}, "model must not be empty"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            RunConfig(**values).validate()
