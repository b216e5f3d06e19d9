"""Atomic writes and the append-only log (senslora.utils.io): a failed or interrupted write keeps the old file
or directory, a crash between the two renames is recovered, the log is cut to whole lines."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from senslora.utils.io import (
    append_line,
    atomic_directory,
    atomic_write_json,
    atomic_write_text,
    recover_directory,
    truncate_log,
)


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "result.json"
    atomic_write_json(target, {"old": True})

    def crash(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        atomic_write_text(target, '{"new": tru')
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_failed_directory_write_keeps_the_old_directory(tmp_path):
    target = tmp_path / "adapter"
    atomic_directory(target, lambda d: (d / "weights").write_text("old"))

    def half_written(directory: Path) -> None:
        (directory / "weights").write_text("ne")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_directory(target, half_written)
    assert (target / "weights").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_crash_between_the_two_renames_is_recovered(tmp_path):
    target = tmp_path / "adapter"
    atomic_directory(target, lambda d: (d / "weights").write_text("old"))
    os.replace(target, tmp_path / ".adapter.old")  # the state right after the first rename
    assert recover_directory(target)
    assert (target / "weights").read_text() == "old"
    assert not recover_directory(target)
    atomic_directory(target, lambda d: (d / "weights").write_text("new"))
    assert (target / "weights").read_text() == "new" and not (tmp_path / ".adapter.old").exists()


def test_log_is_cut_to_the_checkpoint_and_to_whole_lines(tmp_path):
    log = tmp_path / "log.jsonl"
    append_line(log, '{"step": 1}')
    size = log.stat().st_size
    append_line(log, '{"step": 2}')
    with log.open("a") as stream:
        stream.write('{"step": 3, "lo')
    assert truncate_log(log) == 2 * size and log.read_text() == '{"step": 1}\n{"step": 2}\n'
    assert truncate_log(log, size) == size and log.read_text() == '{"step": 1}\n'
    assert truncate_log(log, size + 3) == size  # a size inside a line falls back to the line start
    assert truncate_log(tmp_path / "absent.jsonl", 10) == 0 and (tmp_path / "absent.jsonl").read_text() == ""
    with pytest.raises(ValueError, match="newline"):
        append_line(log, "two\nlines")


def test_atomic_writes_get_the_modes_plain_writes_would(tmp_path):
    """Files and directories written atomically get 0666 / 0777 less the umask, like open() and mkdir()."""
    from senslora.utils.io import atomic_directory, atomic_write_text

    previous = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "file.json", "{}")
        atomic_directory(tmp_path / "adapter", lambda directory: (directory / "weights").write_text("w"))
        (tmp_path / "plain_dir").mkdir()
        (tmp_path / "plain_file").write_text("")
    finally:
        os.umask(previous)

    def mode(name: str) -> int:
        return (tmp_path / name).stat().st_mode & 0o777

    assert mode("file.json") == mode("plain_file") == 0o640
    assert mode("adapter") == mode("plain_dir") == 0o750
