"""The documentation stands on its own: no file points outside the repository, every relative link resolves."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE = ".." + "/shared"  # spelled in two pieces so that this file does not match itself
TEXT_SUFFIXES = {".md", ".py", ".toml", ".yaml", ".yml", ".txt", ".cfg", ".sh", ".html", ".json", ".ini"}
# [text](target) with an optional "title"; the target is what a reader's click opens.
MARKDOWN_LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def tracked_text_files() -> list[Path]:
    """Files git tracks (or, outside a git checkout, the project's own folders), text suffixes only."""
    try:
        listed = subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.splitlines()
        paths = [ROOT / name for name in listed]
    except (OSError, subprocess.CalledProcessError):
        folders = ["src", "tests", "docs", "configs", "scripts", "benchmarks", ".ci"]
        paths = [path for folder in folders for path in (ROOT / folder).rglob("*")]
        paths += list(ROOT.glob("*"))
    return [path for path in paths if path.is_file() and path.suffix in TEXT_SUFFIXES]


def documentation_files() -> list[Path]:
    return [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_no_file_points_outside_the_repository():
    offenders = [
        str(path.relative_to(ROOT))
        for path in tracked_text_files()
        if OUTSIDE in path.read_text(encoding="utf-8", errors="replace")
    ]
    assert offenders == []


@pytest.mark.parametrize("document", documentation_files(), ids=lambda path: str(path.relative_to(ROOT)))
def test_relative_links_resolve_inside_the_repository(document):
    broken = []
    for target in MARKDOWN_LINK.findall(document.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a web address, mail address or an anchor in the same page
        resolved = (document.parent / target.split("#", 1)[0]).resolve()
        if not resolved.is_relative_to(ROOT) or not resolved.exists():
            broken.append(target)
    assert broken == []


def test_method_document_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "](docs/method.md)" in readme
    assert "2509.09119" in (ROOT / "docs" / "method.md").read_text(encoding="utf-8")
