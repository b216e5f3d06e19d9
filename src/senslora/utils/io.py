"""Atomic file output: write to a temporary file beside the target, then rename over it.

A crash mid-write leaves either the old file or the new one, never a truncated one. A directory is
replaced in two renames (old -> `.NAME.old`, new -> NAME); `recover_directory` puts the old one back if a
crash fell between them. The one non-atomic writer is the append-only log (`append_line`), whose torn
last line `truncate_log` removes before a run continues.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` atomically, with the permissions a plain `open(path, "w")` would give."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o666 & ~_current_umask())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write `text` to `path` atomically (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write `data` as indented JSON atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def atomic_directory(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Let `write(tmp_dir)` fill a temporary directory, then move it to `path` (replacing any old one).

    The old directory is removed only after the new one is complete.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(target)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        os.chmod(temporary, 0o777 & ~_current_umask())  # as mkdir would make it (mkdtemp makes it 0700)
        write(temporary)
        if target.exists():
            retired = _retired(target)
            shutil.rmtree(retired, ignore_errors=True)
            os.replace(target, retired)
            os.replace(temporary, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return target


def read_text(path: str | os.PathLike[str], what: str) -> str:
    """Read a UTF-8 file, turning OS errors into a ValueError that names `what` and the path."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{what} {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"{what} {str(path)!r} is a directory, expected a file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{what} {str(path)!r} cannot be read: {error}") from None


def _retired(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def recover_directory(path: str | os.PathLike[str]) -> bool:
    """Undo a directory replacement cut short between its two renames; True if something was restored."""
    target = Path(path)
    retired = _retired(target)
    if not target.exists() and retired.is_dir():
        os.replace(retired, target)
        return True
    return False


def remove_stale_temporaries(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete the `.NAME.*.tmp` files and directories an interrupted atomic write left in `directory`."""
    removed = []
    folder = Path(directory)
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if entry.name.startswith(".") and entry.name.endswith(".tmp"):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def append_line(path: str | os.PathLike[str], line: str) -> None:
    """Append one line to an append-only log and flush it to disk (a crash can tear only this line)."""
    if "\n" in line:
        raise ValueError("a log line must not contain a newline")
    with open(path, "a", encoding="utf-8") as stream:
        stream.write(line + "\n")
        stream.flush()
        os.fsync(stream.fileno())


def truncate_log(path: str | os.PathLike[str], size: int | None = None) -> int:
    """Cut an append-only log to its first `size` bytes (all if None), then back to its last complete line.

    Returns:
        The new size in bytes (0 if the file does not exist; it is then created empty).
    """
    target = Path(path)
    data = target.read_bytes() if target.exists() else b""
    kept = data if size is None else data[: max(0, size)]
    kept = kept[: kept.rfind(b"\n") + 1]
    if kept != data or not target.exists():
        atomic_write_bytes(target, kept)
    return len(kept)


def check_output_path(path: str | os.PathLike[str], what: str, *, directory: bool = False) -> None:
    """Raise ValueError, naming `what`, if `path` cannot become a file (or a directory) we write.

    Checks, without creating anything: the path is not of the other kind, no existing ancestor is a file,
    and the nearest existing ancestor is writable.
    """
    target = Path(path)
    text = str(path)
    if "\x00" in text:
        raise ValueError(f"{what} {text!r} contains a NUL character")
    try:
        if target.exists():
            if directory and not target.is_dir():
                raise ValueError(f"{what} {text!r} is a file, expected a directory")
            if not directory and target.is_dir():
                raise ValueError(f"{what} {text!r} is a directory, expected a file path")
        ancestor = target.absolute().parent
        while not ancestor.exists():
            ancestor = ancestor.parent
    except OSError as error:
        raise ValueError(f"{what} {text!r} is not a usable path: {error.strerror or error}") from None
    if not ancestor.is_dir():
        raise ValueError(f"{what} {text!r} lies under {str(ancestor)!r}, which is a file, not a directory")
    writable_dir = target if directory and target.is_dir() else ancestor
    if not os.access(writable_dir, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {text!r} is not writable (no write permission in {str(writable_dir)!r})")
