"""Fuzzing the command line: random argument lists for every subcommand never show the user a traceback.

Options come from the real parser (every flag, with and without values) mixed with junk tokens; values are
empty strings, negative and huge numbers, NaN and inf, unicode (including a lone surrogate, as argv can
hold after undecodable bytes), NUL characters, missing paths and a few real files. The model and data
loaders are replaced by ones that raise ValueError at once, so no expensive work happens. Every run must end
with exit code 0, 2 or 3 (or argparse's SystemExit 0 for --help/--version, 2 for a usage error), with a
single stderr line for exit code 2 and no "Traceback" anywhere. Random config files (YAML and JSON mappings
of option names to values of any type) must end the same way, with exit code 2.
"""

from __future__ import annotations

import argparse
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import senslora.finetune.preparation as preparation
from senslora.cli import build_parser, main
from senslora.core.metrics import ModuleSensitivity, sensitivities_to_json

EXAMPLES = {"sensitivity": 300, "allocate": 300, "finetune": 300, "evaluate": 300, "report": 150, "compare": 150}
JUNK_OPTIONS = ["--", "-", "-x", "--bogus", "--model=", "--avg-rank=-3", "--no-", "--config=", "-h"]


def subcommand_parsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def option_strings(parser: argparse.ArgumentParser) -> list[str]:
    return sorted({flag for action in parser._actions for flag in action.option_strings})


def value_strategy(files: dict[str, str]) -> st.SearchStrategy[str]:
    numbers = st.one_of(
        st.integers(-(10**30), 10**30).map(str),
        st.sampled_from(["0", "-0", "1", "-1", "2147483648", "9" * 400, "1e309", "-1e-320", "0.5", "1.5"]),
        st.sampled_from(["nan", "NaN", "inf", "-inf", "none", "null", "all", "True", "false"]),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
    )
    texts = st.one_of(
        st.just(""),
        st.text(max_size=12),
        st.sampled_from(["\udcff", "a\x00b", "é", "文字", " ", "\n", "-", "--", "~", "..", "/"]),
    )
    paths = st.sampled_from(
        ["/nonexistent/file.csv", "/nonexistent/dir/", "missing.yaml", "missing.json", "runs", "/dev/null"]
        + list(files.values())
    )
    choices = st.sampled_from(["activation", "fisher", "lora", "eva", "senslora", "params", "pra", "cpu", "cuda"])
    return st.one_of(numbers, texts, paths, choices)


def typed_values(action: argparse.Action, values: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Values that mostly pass the option's own parsing (so that the run gets to the checks behind it)."""
    if action.choices:
        return st.one_of(st.sampled_from(sorted(map(str, action.choices))), values)
    kind = getattr(action.type, "__name__", "")
    if kind in ("int", "_non_negative_int"):
        special = st.sampled_from(["0", "-1", "1", "3", "2147483648", str(2**64), "none"])
        return st.one_of(st.integers(-(10**12), 10**12).map(str), special, values)
    if kind in ("float", "_average_rank"):
        special = st.sampled_from(["nan", "inf", "-inf", "0", "-0.5", "1e308", "1e-320", "none"])
        return st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), special, values)
    return values


def well_formed(parser: argparse.ArgumentParser, values: st.SearchStrategy[str]) -> st.SearchStrategy[list[str]]:
    """Options with the number of values they take, drawn from values of their type."""
    actions = [a for a in parser._actions if a.option_strings and a.dest not in ("help", "version")]

    def tokens(action: argparse.Action) -> st.SearchStrategy[list[str]]:
        flag = st.sampled_from(action.option_strings)
        if action.nargs == 0:
            return flag.map(lambda f: [f])
        count = st.integers(1, 3) if action.nargs == "+" else st.just(1)
        return st.tuples(
            flag, count.flatmap(lambda n: st.lists(typed_values(action, values), min_size=n, max_size=n))
        ).map(lambda pair: [pair[0], *pair[1]])

    options = st.lists(st.sampled_from(actions).flatmap(tokens), max_size=6)
    required = [a for a in actions if a.required]
    given_required = st.tuples(*[tokens(a) for a in required]) if required else st.just(())
    positionals = [a for a in parser._actions if not a.option_strings]
    given_positionals = st.tuples(*[values for _ in positionals]) if positionals else st.just(())
    return st.tuples(given_required, given_positionals, options).map(
        lambda parts: [*[t for group in parts[0] for t in group], *parts[1], *[t for group in parts[2] for t in group]]
    )


def chaotic(parser: argparse.ArgumentParser, values: st.SearchStrategy[str]) -> st.SearchStrategy[list[str]]:
    """Any flags of the parser and junk, each followed by zero to two arbitrary values."""
    flag = st.one_of(st.sampled_from(option_strings(parser)), st.sampled_from(JUNK_OPTIONS))
    group = st.tuples(flag, st.lists(values, max_size=2)).map(lambda pair: [pair[0], *pair[1]])
    return st.tuples(st.lists(values, max_size=2), st.lists(group, max_size=6)).map(
        lambda parts: [*parts[0], *[token for group in parts[1] for token in group]]
    )


def argv_strategy(command: str, parser: argparse.ArgumentParser, files: dict[str, str]) -> st.SearchStrategy:
    values = value_strategy(files)
    shapes = st.one_of(*[well_formed(parser, values)] * 3, chaotic(parser, values))
    return shapes.map(lambda tokens: [command, *tokens])


@pytest.fixture
def real_files(tmp_path):
    """A few real inputs, so that some runs get past the first check."""
    sensitivities = {
        name: ModuleSensitivity(name, 4, 4, 1.0 + i, 1.0, 2, 4) for i, name in enumerate(["a.q", "a.k", "b.q"])
    }
    (tmp_path / "sensitivity.json").write_text(sensitivities_to_json(sensitivities))
    (tmp_path / "run.yaml").write_text("avg_rank: 2\nepochs: 1\n")
    (tmp_path / "list.yaml").write_text("- 1\n")
    (tmp_path / "train.csv").write_text("sentence,label\na,1\nb,0\n")
    (tmp_path / "broken.json").write_text('{"format": ')
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    names = ["sensitivity.json", "run.yaml", "list.yaml", "train.csv", "broken.json", "adapter"]
    return {name: str(tmp_path / name) for name in names}


def refuse(*args, **kwargs):
    raise ValueError("loading is switched off in this test")


@pytest.mark.parametrize("command", list(EXAMPLES))
def test_no_argument_list_shows_a_traceback(command, real_files, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(preparation, "load_model_and_tokenizer", refuse)
    monkeypatch.setattr(preparation, "load_task_data", refuse)
    monkeypatch.chdir(tmp_path)  # default outputs (runs/, ranks.json, ...) land here
    parser = subcommand_parsers()[command]
    tried, outcomes = 0, {}

    @settings(
        max_examples=EXAMPLES[command],
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(argv_strategy(command, parser, real_files))
    def run(argv):
        nonlocal tried
        tried += 1
        try:
            code = main(argv)
            kind = "returned"
        except SystemExit as stop:
            code, kind = stop.code, "argparse"
            assert code in (0, 2), (argv, code)
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err + captured.out, argv
        assert code in (0, 2, 3), (argv, code, captured.err)
        if code == 2:
            assert len([line for line in captured.err.splitlines() if line.strip()]) == 1, (argv, captured.err)
        outcomes[(kind, code)] = outcomes.get((kind, code), 0) + 1

    run()
    print(f"\n{command}: {tried} argument lists tried; outcomes {sorted(outcomes.items())}")
    assert tried >= EXAMPLES[command]
    assert outcomes.get(("returned", 2), 0) > 0 and outcomes.get(("argparse", 2), 0) > 0


def config_documents() -> st.SearchStrategy[dict]:
    """Mappings of real option names (and a few unknown ones) to values of any YAML/JSON type."""
    from dataclasses import fields

    from senslora.finetune.config import RunConfig

    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=8),
        st.sampled_from(["none", "1e-3", "lora", "activation", "cpu", "../x", ""]),
    )
    values = st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=2),
        max_leaves=6,
    )
    keys = st.sampled_from([f.name for f in fields(RunConfig)] + ["colour", "avg-rank", "Model", "1"])
    return st.dictionaries(keys, values, max_size=6)


def test_no_config_file_shows_a_traceback(tmp_path, capsys, monkeypatch):
    """Random config files (YAML and JSON) end in exit code 2 and one line, before any loading."""
    import yaml

    monkeypatch.setattr(preparation, "load_model_and_tokenizer", refuse)
    monkeypatch.setattr(preparation, "load_task_data", refuse)
    monkeypatch.chdir(tmp_path)
    tried = 0

    @settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(config_documents(), st.sampled_from(["yaml", "json"]))
    def run(document, suffix):
        nonlocal tried
        tried += 1
        path = tmp_path / f"run.{suffix}"
        path.write_text(yaml.safe_dump(document) if suffix == "yaml" else json.dumps(document))
        code = main(["finetune", "--config", str(path), "--output-dir", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, (document, code, err)
        assert len([line for line in err.splitlines() if line.strip()]) == 1, (document, err)

    run()
    print(f"\nconfig files: {tried} tried")
    assert tried >= 300
