"""Config files: YAML or JSON (parsed safely) mapping option names to values, checked key by key.

Keys are RunConfig's option names (`avg_rank`, or `avg-rank`); a key that is instead a
`transformers.TrainingArguments` field is passed to the Trainer as it is (`trainer_arguments`), unless
senslora sets that field from one of its own options, in which case the message names the option.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from senslora.finetune.config import RunConfig
from senslora.finetune.options import coerce_value, field_types
from senslora.finetune.training.settings import (
    OWNED_TRAINER_ARGUMENTS,
    check_trainer_arguments,
    owned_argument_message,
    trainer_argument_names,
)
from senslora.utils.io import read_text


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file (safe parsing only) into {field name: value}.

    Keys are RunConfig's option names; a key that is instead a `transformers.TrainingArguments` field goes
    into `trainer_arguments` (passed to the Trainer as it is), unless senslora sets that field from one of
    its own options (the message names the option). A `trainer_arguments` mapping (as config.json records
    it) is read the same way.
    """
    text = read_text(path, "config file")
    suffix = Path(path).suffix.lower()
    try:
        if suffix == ".json":
            document = json.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            document = yaml.safe_load(text)
        else:
            raise ValueError(f"config file {str(path)!r} must end in .yaml, .yml or .json")
    except (json.JSONDecodeError, ValueError) as error:
        if isinstance(error, ValueError) and not isinstance(error, json.JSONDecodeError):
            raise
        raise ValueError(f"config file {str(path)!r} is not valid JSON: {error}") from None
    except Exception as error:  # yaml.YAMLError and friends
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"config file {str(path)!r} is not valid YAML: {first}") from None
    if document is None:
        return {}
    if not isinstance(document, Mapping):
        raise ValueError(f"config file {str(path)!r} must hold a mapping of option names to values")
    types = field_types(RunConfig)
    known = set(types)
    values: dict[str, Any] = {}
    passed_through: dict[str, Any] = {}
    for key, value in document.items():
        name = str(key).replace("-", "_")
        if name in known:
            values[name] = coerce_value(name, types[name], value)
        elif name in trainer_argument_names():
            if name in OWNED_TRAINER_ARGUMENTS:
                raise ValueError(f"config file {str(path)!r}: {owned_argument_message(name)}")
            passed_through[name] = value
        else:
            raise ValueError(
                f"config file {str(path)!r}: unknown option {key!r} (neither a senslora option nor a "
                "transformers.TrainingArguments field)"
            )
    if passed_through:
        values["trainer_arguments"] = {**values.get("trainer_arguments", {}), **passed_through}
    if "trainer_arguments" in values:
        try:
            check_trainer_arguments(values["trainer_arguments"])
        except ValueError as error:
            raise ValueError(f"config file {str(path)!r}: {error}") from None
    return values
