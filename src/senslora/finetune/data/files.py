"""Local data files: csv, tsv, json, jsonl and txt, each optionally .gz/.bz2 compressed, read into a table."""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
from pathlib import Path
from typing import Any

import pandas as pd

from senslora.finetune.data.presets import COMPRESSED_SUFFIXES, FILE_FORMATS


def _compression(path: Path) -> str | None:
    suffix = path.suffix.lower()
    return suffix if suffix in COMPRESSED_SUFFIXES else None


def _file_format(path: Path, file_format: str | None) -> str:
    if file_format is not None:
        return file_format
    name = path.name.lower()
    compression = _compression(path)
    if compression is not None:
        name = name[: -len(compression)]
    suffix = Path(name).suffix.lstrip(".")
    if suffix not in FILE_FORMATS:
        allowed = ", ".join(f".{f}" for f in FILE_FORMATS)
        raise ValueError(
            f"cannot tell the format of data file {str(path)!r}: suffix {suffix!r} is not one of {allowed} "
            "(optionally with .gz or .bz2); give file_format"
        )
    return suffix


def _read_text(path: Path) -> str:
    compression = _compression(path)
    if compression == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as stream:
            return stream.read()
    if compression == ".bz2":
        with bz2.open(path, "rt", encoding="utf-8") as stream:
            return stream.read()
    return path.read_text(encoding="utf-8")


def _json_records(text: str, path: Path, file_format: str) -> list[Any]:
    if file_format == "json":
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError:
            loaded = None  # maybe JSON lines in a .json file
        if isinstance(loaded, list):
            return loaded
        if isinstance(loaded, dict):
            if isinstance(loaded.get("data"), list):
                return loaded["data"]
            raise ValueError(
                f"JSON data file {str(path)!r} holds an object without a 'data' list; "
                "expected a list of records, {'data': [records]}, or JSON lines"
            )
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"data file {str(path)!r} line {number} is not valid JSON: {error}") from None
    return records


def _read_table(path: Path, file_format: str | None, what: str = "data file") -> pd.DataFrame:
    """Read a local data file into a table (all of it is one split)."""
    if not path.exists():
        raise ValueError(f"{what} {str(path)!r} does not exist")
    if not path.is_file():
        raise ValueError(f"{what} {str(path)!r} is not a file")
    kind = _file_format(path, file_format)
    try:
        text = _read_text(path)
        if kind in ("csv", "tsv"):
            if not text.strip():
                raise ValueError(f"{what} {str(path)!r} is empty")
            options: dict[str, Any] = {"sep": "\t", "quoting": csv.QUOTE_NONE} if kind == "tsv" else {}
            frame = pd.read_csv(io.StringIO(text), keep_default_na=False, na_values=[""], **options)
        elif kind == "txt":
            frame = pd.DataFrame({"text": [line.strip() for line in text.splitlines() if line.strip()]})
        else:
            records = _json_records(text, path, kind)
            bad = next((r for r in records if not isinstance(r, dict)), None)
            if bad is not None:
                raise ValueError(f"{what} {str(path)!r} holds a record that is not an object: {bad!r:.80}")
            frame = pd.DataFrame.from_records(records)
    except (OSError, EOFError, UnicodeDecodeError, pd.errors.ParserError) as error:
        raise ValueError(f"{what} {str(path)!r} cannot be read as {kind}: {_one_line(error)}") from None
    if len(frame) == 0:
        raise ValueError(f"{what} {str(path)!r} holds no examples")
    frame.columns = [str(column) for column in frame.columns]
    return frame


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return line if len(line) <= 300 else line[:297] + "..."
