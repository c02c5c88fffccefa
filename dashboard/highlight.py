"""Highlight word n-grams a document shares with a reference text (prompt + continuation).

Pure functions, no Streamlit: the output is HTML in which every piece of document text is escaped,
so a document containing markup is shown as text, never rendered.
"""

from __future__ import annotations

import html
import re

_WORD = re.compile(r"\w+", re.UNICODE)
# N-grams made only of these words are not worth a highlight ("of the", "in a").
STOPWORDS = frozenset(
    "a an and are as at be by for from has have if in into is it its of on or that the this to was were "
    "which with you your can will not but we they their then than there so such these those".split()
)


def words(text: str) -> list[str]:
    return [m.group(0).lower() for m in _WORD.finditer(text)]


def ngrams(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def shared_ngrams(doc: str, reference: str, n: int = 3) -> set[tuple[str, ...]]:
    """Word n-grams (lower-cased) present in both texts, except those made only of stopwords."""
    if n < 1:
        raise ValueError("n must be >= 1")
    common = ngrams(words(doc), n) & ngrams(words(reference), n)
    return {g for g in common if not all(w in STOPWORDS for w in g)}


def highlight_html(doc: str, reference: str, n: int = 3, tag: str = "mark") -> tuple[str, int]:
    """(escaped HTML of `doc` with shared n-gram spans wrapped in <tag>, number of shared n-grams)."""
    shared = shared_ngrams(doc, reference, n)
    matches = list(_WORD.finditer(doc))
    toks = [m.group(0).lower() for m in matches]
    marked = [False] * len(matches)
    for i in range(len(toks) - n + 1):
        if tuple(toks[i:i + n]) in shared:
            for j in range(i, i + n):
                marked[j] = True
    out, pos, i = [], 0, 0
    while i < len(matches):
        if not marked[i]:
            i += 1
            continue
        j = i
        while j + 1 < len(matches) and marked[j + 1]:
            j += 1
        start, end = matches[i].start(), matches[j].end()
        out.append(html.escape(doc[pos:start]))
        out.append(f"<{tag}>{html.escape(doc[start:end])}</{tag}>")
        pos, i = end, j + 1
    out.append(html.escape(doc[pos:]))
    return "".join(out), len(shared)
