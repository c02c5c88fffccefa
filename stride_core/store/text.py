"""Text utilities shared by the audits and the lexical ranking: word segmentation (with offsets, for
evidence spans), word normalisation, a streamed TF-IDF cosine against a corpus, and per-query z-scores."""

from __future__ import annotations

import re
import unicodedata

import numpy as np

# Scripts written without spaces (CJK ideographs, kana, Hangul syllables) count one character per word,
# so their n-grams are character n-grams; everything else is a run of \w characters.
# Combining accents (U+0300-036F) stay inside a word, and every word is NFKC-normalised and case-folded,
# so composed and decomposed accents, full-width letters and ligatures match their plain forms.
_UNSPACED = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
WORD = re.compile(f"[{_UNSPACED}]|[^\\W{_UNSPACED}]+")
_COMBINING = re.compile("[\u0300-\u036f]")
_WORD_WITH_ACCENTS = re.compile(f"[{_UNSPACED}]|(?:[^\\W{_UNSPACED}]|[\u0300-\u036f])+")  # slower: used only when needed


def words(text: str) -> list[tuple[str, int, int]]:
    """(normalised word, start, end) with offsets into `text` (for evidence spans)."""
    pattern = _WORD_WITH_ACCENTS if _COMBINING.search(text) else WORD
    return [(normalise_word(m.group()), m.start(), m.end()) for m in pattern.finditer(text)]


def normalise_word(word: str) -> str:
    return word.lower() if word.isascii() else unicodedata.normalize("NFKC", word).casefold()


def tfidf_similarity(ws, corpus: str, doc_ids: np.ndarray, texts: list[str], batch_docs: int = 2000, scan=None, on_batch=None,
                     shards=None):
    """(Q, N) TF-IDF cosine between items and documents (hashed features, two streaming passes over the
    corpus); `scan(doc_id, text)` is called for every document in the second pass."""
    from sklearn.feature_extraction.text import HashingVectorizer
    from sklearn.preprocessing import normalize

    from .corpus import iter_documents

    vec = HashingVectorizer(n_features=2 ** 20, alternate_sign=False, norm=None, lowercase=True, token_pattern=WORD.pattern)
    df = np.zeros(vec.n_features, dtype=np.int64)
    n = 0
    for batch in iter_documents(ws, corpus, ["doc_id", "text"], batch_docs, shards=shards):
        X = vec.transform(batch["text"])
        X.data[:] = 1
        df += np.asarray(X.sum(axis=0)).ravel().astype(np.int64)
        n += len(batch)
    idf = np.log((1 + n) / (1 + df)) + 1.0
    Xq = normalize(vec.transform(texts).multiply(idf).tocsr())
    col = {int(d): i for i, d in enumerate(doc_ids)}
    sims = np.zeros((len(texts), len(doc_ids)), dtype=np.float32)
    done = 0
    for batch in iter_documents(ws, corpus, ["doc_id", "text"], batch_docs, shards=shards):
        Xd = normalize(vec.transform(batch["text"]).multiply(idf).tocsr())
        S = (Xq @ Xd.T).toarray()
        cols = np.array([col.get(int(d), -1) for d in batch["doc_id"]])
        ok = cols >= 0
        sims[:, cols[ok]] = S[:, ok]
        if scan is not None:
            for d, t in zip(batch["doc_id"], batch["text"]):
                scan(int(d), t)
        done += len(batch)
        if on_batch:
            on_batch(done / max(1, n))
    return sims


def zscore_rows(s: np.ndarray) -> np.ndarray:
    """Per row (query), standardised over its columns (documents); a constant row becomes 0."""
    s = np.asarray(s, dtype=np.float64)
    sd = s.std(axis=1, keepdims=True)
    return np.where(sd > 0, (s - s.mean(axis=1, keepdims=True)) / np.where(sd > 0, sd, 1.0), 0.0)
