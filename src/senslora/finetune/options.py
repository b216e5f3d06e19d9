"""Typed options: a dataclass field that carries its command-line help, and the checks every option gets.

An option group is a dataclass whose fields are declared with `option(default, help, choices=...)`; the
command line builds one flag per field (`--avg-rank` for `avg_rank`), a config file uses the field names as
keys, and Python passes them as keyword arguments: one declaration, one default, three ways in.

Every value is checked against its annotation before anything is loaded (`check_field_values`): the type
(bool, int, float, str, a list of them, or None where the annotation allows it), finite numbers, integers
within MAX_INT, non-empty strings without NUL characters, and the allowed choices.
"""

from __future__ import annotations

import functools
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import Field, field, fields
from typing import Any

MAX_INT = 2**31 - 1  # largest integer option: keeps seeds, counts and lengths inside every library's range


def option(default: Any, help: str, *, choices: tuple[str, ...] | None = None, flag: bool = True) -> Any:
    """A dataclass field carrying its CLI help text (and allowed values); lists and mappings get a fresh copy
    each time. `flag=False`: set only from a config file (or Python), no command-line flag."""
    metadata = {"help": help, "choices": choices, "flag": flag}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def default_of(item: Field) -> Any:
    """A field's default value (a fresh copy for lists and mappings)."""
    return item.default_factory() if callable(item.default_factory) else item.default


def flag_names(group: type) -> list[str]:
    """Names of a group's fields that have a command-line flag, in declaration order."""
    return [item.name for item in fields(group) if item.metadata.get("flag", True)]


@functools.cache
def field_types(group: type) -> dict[str, Any]:
    """Resolved type annotations of a dataclass's fields (computed once per class)."""
    return typing.get_type_hints(group)


def base_type(annotation: Any) -> tuple[Any, bool, bool]:
    """(scalar type, optional, is_list) of an annotation such as `int | None` or `list[str] | None`."""
    optional = False
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        optional = type(None) in args
        annotation = next(a for a in args if a is not type(None))
    if typing.get_origin(annotation) is list:
        return typing.get_args(annotation)[0], optional, True
    return annotation, optional, False


def check_field_values(instance: Any, group: type | None = None) -> None:
    """Raise ValueError naming the first field of `group` (default: the instance's class) whose value does
    not fit its type, then the first whose value is not among its choices."""
    group = group or type(instance)
    hints = field_types(group)
    for item in fields(group):
        check_type(item.name, hints[item.name], getattr(instance, item.name))
    for item in fields(group):
        choices = item.metadata.get("choices")
        value = getattr(instance, item.name)
        if choices and value is not None:
            values = value if isinstance(value, list) else [value]
            bad = [v for v in values if v not in choices]
            if bad:
                raise ValueError(f"{item.name}: {bad[0]!r} is not allowed; choose from {', '.join(choices)}")


def check_type(name: str, annotation: Any, value: Any) -> None:
    """Raise ValueError if `value` does not fit the field's type, is a non-finite number, an integer
    beyond MAX_INT, or an empty string (or one holding a NUL character). A mapping field is checked as a
    mapping only (its entries are checked by whoever uses them)."""
    if typing.get_origin(annotation) is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{name} must be a mapping, got {value!r}")
        return
    scalar, optional, is_list = base_type(annotation)
    if value is None:
        if optional:
            return
        raise ValueError(f"{name} must not be empty (none)")
    values = value if is_list else [value]
    if is_list and not isinstance(value, list):
        raise ValueError(f"{name} must be a list, got {value!r}")
    for item in values:
        if scalar is bool:
            if not isinstance(item, bool):
                raise ValueError(f"{name} must be true or false, got {item!r}")
        elif scalar is int:
            if isinstance(item, bool) or not isinstance(item, int):
                raise ValueError(f"{name} must be an integer, got {item!r}")
            if abs(item) > MAX_INT:
                raise ValueError(f"{name} must be an integer of at most {MAX_INT}, got {item}")
        elif scalar is float:
            if isinstance(item, bool) or not isinstance(item, int | float):
                raise ValueError(f"{name} must be a number, got {item!r}")
            if not math.isfinite(item):
                raise ValueError(f"{name} must be a finite number, got {item!r}")
        else:
            if not isinstance(item, str):
                raise ValueError(f"{name} must be a string, got {item!r}")
            if not item.strip() or "\x00" in item:
                raise ValueError(f"{name} must be a non-empty string without NUL characters, got {item!r}")


def coerce_value(name: str, annotation: Any, value: Any) -> Any:
    """Check and convert a config-file value to the field's type; ValueError names the key."""
    if typing.get_origin(annotation) is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"config key {name!r} must be a mapping of TrainingArguments fields to values")
        return {str(key).replace("-", "_"): item for key, item in value.items()}
    scalar, optional, is_list = base_type(annotation)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "all")):
        if optional:
            return None
        raise ValueError(f"config key {name!r} cannot be empty")
    if is_list:
        values = value if isinstance(value, list) else [value]
        return [coerce_scalar(name, scalar, v) for v in values]
    return coerce_scalar(name, scalar, value)


def coerce_scalar(name: str, scalar: Any, value: Any) -> Any:
    """One config-file value as `scalar` (bool, int, float or str); ValueError names the key."""
    if scalar is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"config key {name!r} must be true or false, got {value!r}")
    if scalar is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"config key {name!r} must be an integer, got {value!r}")
        return value
    if scalar is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"config key {name!r} must be a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"config key {name!r} must be a string, got {value!r}")
    return value
