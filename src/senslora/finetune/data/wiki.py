"""Plain text of MediaWiki markup, and the paragraphs of one article (the offline wikipedia source)."""

from __future__ import annotations

import html
import re
from typing import Any

from senslora.finetune.data.presets import MIN_PARAGRAPH_CHARS

_WIKI_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_WIKI_REF = re.compile(r"<ref[^>]*?/>|<ref[^>]*?>.*?</ref\s*>", re.DOTALL | re.IGNORECASE)
_WIKI_DROPPED_ELEMENTS = re.compile(
    r"<(math|gallery|timeline|imagemap|score|syntaxhighlight|source|pre|nowiki|references)\b[^>]*?>.*?</\1\s*>",
    re.DOTALL | re.IGNORECASE,
)
_WIKI_TAG = re.compile(r"</?[a-zA-Z][^<>]*?/?>")
_WIKI_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_WIKI_TABLE = re.compile(r"\{\|(?:(?!\{\|).)*?\|\}", re.DOTALL)
_WIKI_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")
_WIKI_EXTERNAL_LINK = re.compile(r"\[(?:https?:|ftp:)?//[^\s\]]*\s*([^\]]*)\]")
_WIKI_EMPHASIS = re.compile(r"'{2,}")
_WIKI_MAGIC_WORD = re.compile(r"__[A-Z]+__")
_WIKI_NAMESPACED = re.compile(r"^\s*([A-Za-z][A-Za-z -]*|[a-z]{2,3}(?:-[a-z]+)?)\s*:")
_WIKI_LEFTOVER = ("[[", "]]", "{{", "}}", "{|", "|}")


def _replace_until_stable(pattern: re.Pattern[str], replacement: Any, text: str) -> str:
    while True:
        replaced = pattern.sub(replacement, text)
        if replaced == text:
            return text
        text = replaced


def _wiki_link_text(match: re.Match[str]) -> str:
    inner = match.group(1)
    target = inner.split("|", 1)[0]
    if _WIKI_NAMESPACED.match(target):  # File:, Image:, Category:, interlanguage links
        return ""
    return inner.rsplit("|", 1)[-1]


def strip_wiki_markup(text: str) -> str:
    """Plain text of MediaWiki markup: drops comments, references, templates, tables, files and categories;
    keeps the visible text of links; removes tags and bold/italic quotes. Line structure is kept."""
    text = html.unescape(text)
    text = _WIKI_COMMENT.sub("", text)
    text = _WIKI_REF.sub("", text)
    text = _WIKI_DROPPED_ELEMENTS.sub("", text)
    text = _replace_until_stable(_WIKI_TEMPLATE, "", text)  # innermost first, so nesting unwinds
    text = _replace_until_stable(_WIKI_TABLE, "", text)
    text = _WIKI_TAG.sub("", text)
    text = _replace_until_stable(_WIKI_LINK, _wiki_link_text, text)
    text = _WIKI_EXTERNAL_LINK.sub(r"\1", text)
    text = _WIKI_EMPHASIS.sub("", text)
    return _WIKI_MAGIC_WORD.sub("", text)


def _wiki_paragraphs(markup: str) -> tuple[list[str], int]:
    """Paragraphs of one article and how many were dropped for leftover (unbalanced) markup."""
    kept, dropped = [], 0
    for line in strip_wiki_markup(markup).splitlines():
        line = line.strip()
        if not line or line[0] in "=|!{}":  # headings and table remnants
            continue
        line = re.sub(r"\s+", " ", line.lstrip("*#:; ")).strip()
        if len(line) <= MIN_PARAGRAPH_CHARS:
            continue
        if any(marker in line for marker in _WIKI_LEFTOVER):
            dropped += 1
        else:
            kept.append(line)
    return kept, dropped
