"""Shared fixtures of the command-line tests: run `senslora` in-process and read what it printed."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from senslora.cli import main


@pytest.fixture
def run_cli(capsys) -> Callable[[Sequence[object]], tuple[int, str, str]]:
    """`run_cli(args)` runs `senslora args` and returns (exit code, stdout, stderr)."""

    def run(args: Sequence[object]) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def stderr_lines() -> Callable[[str], list[str]]:
    """`stderr_lines(err)`: the non-blank lines of what a command printed to stderr."""
    return lambda err: [line for line in err.splitlines() if line.strip()]
