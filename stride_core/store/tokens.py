"""Token store: a corpus tokenized once, streamed from DuckDB in bounded chunks, kept on disk.

`pipeline.index` used to hold every document's text and token-id list in memory at once; with the
store, peak memory is one chunk of documents (`chunk_docs`) plus O(N) integers (ids, offsets), and the
activation pass reads each document's ids from a memmap when its batch comes up. Only a prefix of each
text is read and tokenized (`char_budget`, grown for a document whose prefix is too short): a document
of any size costs memory in proportion to max_tokens, not to its length.

Layout of a store folder (runs/<run>/tokens/):
  meta.json       corpus, corpus created_at, shards, max_tokens, N, total tokens, finished flag
  doc_ids.npy     (N,)   int64  document ids, in doc_id order
  offsets.npy     (N+1,) int64  document i owns ids[offsets[i]:offsets[i+1]]
  ids.bin         (Ttot,) int32 token ids (truncated to max_tokens per document)
  parts/          per-chunk files while tokenizing (resumable; several processes may fill them)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..errors import RunError, StrideError
from ..method.storage import load_npy, open_memmap

logger = logging.getLogger(__name__)


@dataclass
class TokenizeArgs:
    """Streaming tokenization: documents per DuckDB read / tokenizer call (bounds host memory)."""

    max_tokens: int = 256
    chunk_docs: int = 4096

    def __post_init__(self):
        if self.max_tokens < 1:
            raise StrideError("max_tokens must be >= 1")
        if self.chunk_docs < 1:
            raise StrideError("chunk_docs must be >= 1")


@dataclass
class TokenStore:
    root: Path
    doc_ids: np.ndarray  # (N,)
    offsets: np.ndarray  # (N+1,)
    ids: np.ndarray  # (Ttot,) int32 memmap

    @property
    def n_docs(self) -> int:
        return len(self.doc_ids)

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def tokens(self, i: int) -> list[int]:
        return self.ids[self.offsets[i]:self.offsets[i + 1]].tolist()

    def items(self) -> "TokenItems":
        """Lazy sequence of (token ids, 0) per document: what activations.build_cache takes."""
        return TokenItems(self)

    @classmethod
    def open(cls, root: Path) -> "TokenStore":
        root = Path(root)
        meta = _read_meta(root)
        if not meta or not meta.get("finished"):
            raise RunError(f"no finished token store in {root}; re-run `stride index` to build it")
        offsets = load_npy(root / "offsets.npy", root)
        T = int(offsets[-1])
        ids = open_memmap(root / "ids.bin", np.int32, "r", (T,), root) if T else np.zeros(0, np.int32)
        return cls(root, load_npy(root / "doc_ids.npy", root), offsets, ids)


class TokenItems(Sequence):
    """items[i] -> (list of token ids, 0): document i read from the store's memmap on demand."""

    def __init__(self, store: TokenStore):
        self.store = store

    def __len__(self) -> int:
        return self.store.n_docs

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return (self.store.tokens(int(i)), 0)


# ------------------------------------------------------------------------------------ reading


def _where(shards):
    if shards is None:
        return "", []
    return " WHERE list_contains(?, shard)", [[int(s) for s in shards]]


def corpus_doc_ids(ws, corpus: str, shards: list[int] | None = None) -> np.ndarray:
    """(N,) doc ids of a corpus (optionally some shards), ascending. O(N) int64, no text."""
    from .corpus import corpus_info, docs_table

    corpus_info(ws, corpus)  # raises on an unknown corpus
    where, params = _where(shards)
    with ws.connect(read_only=True) as con:
        rows = con.execute(f"SELECT doc_id FROM {docs_table(corpus)}{where} ORDER BY doc_id", params).fetchnumpy()
    return np.asarray(rows["doc_id"], dtype=np.int64)


# Characters read per token kept: English BPE averages about 4 characters a token; 8 leaves room for
# code and whitespace runs. A document whose prefix still gives too few tokens is read again, larger.
CHARS_PER_TOKEN = 8
_MARGIN_TOKENS = 16  # tokens past max_tokens a prefix must give, so the cut cannot change the kept ones


def char_budget(max_tokens: int) -> int:
    return max_tokens * CHARS_PER_TOKEN + 256


def iter_texts(ws, corpus: str, doc_ids: np.ndarray, chunk_docs: int, chunks: Sequence[int] | None = None,
               shards: list[int] | None = None, max_chars: int | None = None
               ) -> Iterator[tuple[int, np.ndarray, list[str], np.ndarray]]:
    """Yield (chunk number, doc ids, texts, n_chars) for chunks of `chunk_docs` consecutive documents of
    `doc_ids` (ascending), one short read-only DuckDB query per chunk (doc_id range + shard filter).
    With `max_chars`, each text is its first max_chars characters (cut in DuckDB, so a long document is
    never read whole); n_chars is the full length."""
    from .corpus import docs_table

    n_chunks = -(-len(doc_ids) // chunk_docs)
    for c in (range(n_chunks) if chunks is None else chunks):
        want = doc_ids[c * chunk_docs:(c + 1) * chunk_docs]
        where, params = _where(shards)
        where = (where + " AND" if where else " WHERE") + " doc_id BETWEEN ? AND ?"
        params += [int(want[0]), int(want[-1])]
        text = "text" if max_chars is None else "substr(text, 1, ?)"
        head = [] if max_chars is None else [int(max_chars)]
        with ws.connect(read_only=True) as con:
            got = con.execute(f"SELECT doc_id, {text} AS text, n_chars FROM {docs_table(corpus)}{where} ORDER BY doc_id",
                              head + params).fetchnumpy()
        if not np.array_equal(np.asarray(got["doc_id"], dtype=np.int64), want):
            raise RunError(f"corpus {corpus!r} changed while it was being tokenized; re-run `stride index`")
        yield c, want, [str(t) for t in got["text"]], np.asarray(got["n_chars"], dtype=np.int64)


def _read_prefix(ws, corpus: str, doc_id: int, n: int) -> str:
    from .corpus import docs_table

    with ws.connect(read_only=True) as con:
        return str(con.execute(f"SELECT substr(text, 1, ?) FROM {docs_table(corpus)} WHERE doc_id = ?", [int(n), int(doc_id)]).fetchone()[0])


def _cut_at_word(prefix: str) -> str:
    """`prefix` (a cut text) shortened to end before a space that starts a word: tokenizers split there
    (pre-tokenization), so the tokens before the cut are those of the whole text. Unchanged without one."""
    for p in range(len(prefix) - 2, 0, -1):
        if prefix[p].isspace() and not prefix[p - 1].isspace() and not prefix[p + 1].isspace():
            return prefix[:p]
    return prefix


def tokenize_bounded(ws, corpus: str, tokenizer, doc_ids: np.ndarray, texts: list[str], n_chars: np.ndarray,
                     max_tokens: int) -> list[list[int]]:
    """The first max_tokens token ids of each document, from text prefixes (`iter_texts(max_chars=...)`).
    A cut prefix must give max_tokens + a margin tokens; one that gives fewer is read again 4x longer
    (until the whole text), so the result equals tokenizing the whole text and truncating."""
    cut = [len(t) < n for t, n in zip(texts, n_chars)]
    texts = [_cut_at_word(t) if c else t for t, c in zip(texts, cut)]
    enc = tokenizer(texts, add_special_tokens=False)["input_ids"]
    out = []
    for i, ids in enumerate(enc):
        size = len(texts[i])
        while cut[i] and len(ids) < max_tokens + _MARGIN_TOKENS:
            size *= 4
            text = _read_prefix(ws, corpus, int(doc_ids[i]), size)
            cut[i] = len(text) < int(n_chars[i])
            ids = tokenizer([_cut_at_word(text) if cut[i] else text], add_special_tokens=False)["input_ids"][0]
        out.append(list(ids[:max_tokens]))
    return out


# ----------------------------------------------------------------------------------- building


def _read_meta(root: Path) -> dict | None:
    p = Path(root) / "meta.json"
    return json.loads(p.read_text()) if p.exists() else None


def _store_key(ws, corpus: str, shards, args: TokenizeArgs) -> dict:
    from .corpus import corpus_info

    info = corpus_info(ws, corpus)
    return {"corpus": corpus, "corpus_created_at": str(info.get("created_at")), "shards": shards,
            "max_tokens": args.max_tokens, "chunk_docs": args.chunk_docs}


def begin_tokens(ws, corpus: str, shards: list[int] | None, root: Path, args: TokenizeArgs) -> tuple[dict, np.ndarray]:
    """Validate (or reset) the store folder for this corpus/arguments. Returns (meta, doc ids).
    Only one process may call this for a given root (the others wait for it)."""
    root = Path(root)
    key = _store_key(ws, corpus, shards, args)
    old = _read_meta(root)
    if old is not None and {k: old.get(k) for k in key} != key:
        logger.info("token store in %s is for other arguments or an older copy of the corpus: rebuilding", root)
        shutil.rmtree(root)
        old = None
    doc_ids = corpus_doc_ids(ws, corpus, shards)
    if old is not None and old.get("finished"):
        if np.array_equal(np.load(root / "doc_ids.npy"), doc_ids):
            return old, doc_ids
        shutil.rmtree(root)
    (root / "parts").mkdir(parents=True, exist_ok=True)
    meta = {**key, "n_docs": int(len(doc_ids)), "finished": False}
    np.save(root / "doc_ids.npy", doc_ids)
    (root / "meta.json").write_text(json.dumps(meta))
    return meta, doc_ids


def tokenize_part(ws, corpus: str, shards: list[int] | None, root: Path, tokenizer, args: TokenizeArgs,
                  rank: int = 0, world: int = 1, progress: bool = False) -> int:
    """Tokenize the chunks c with c % world == rank that are not done yet into parts/; returns how many.
    Processes with different ranks write different files, so they can run at the same time."""
    from tqdm.auto import tqdm

    root = Path(root)
    doc_ids = np.load(root / "doc_ids.npy")
    n_chunks = -(-len(doc_ids) // args.chunk_docs)
    mine = [c for c in range(rank, n_chunks, world) if not (root / "parts" / f"{c:07d}.npz").exists()]
    bar = tqdm(total=len(mine), desc="tokenize", disable=not progress, mininterval=1.0)
    for c, ids_c, texts, n_chars in iter_texts(ws, corpus, doc_ids, args.chunk_docs, mine, shards,
                                               max_chars=char_budget(args.max_tokens)):
        enc = tokenize_bounded(ws, corpus, tokenizer, ids_c, texts, n_chars, args.max_tokens)
        lengths = np.fromiter((len(ids) for ids in enc), dtype=np.int64, count=len(enc))
        flat = np.fromiter((t for ids in enc for t in ids), dtype=np.int64, count=int(lengths.sum()))
        if len(flat) and (flat.min() < 0 or flat.max() > np.iinfo(np.int32).max):
            raise StrideError("token ids do not fit in int32")
        tmp = root / "parts" / f"{c:07d}.partial.npz"
        np.savez(tmp, lengths=lengths, ids=flat.astype(np.int32))
        os.replace(tmp, root / "parts" / f"{c:07d}.npz")
        bar.update(1)
    bar.close()
    return len(mine)


def finish_tokens(root: Path) -> TokenStore:
    """Concatenate the parts into ids.bin/offsets.npy (4 bytes per token: small next to the activation
    cache), mark the store finished, remove the parts. Raises when a chunk is missing."""
    root = Path(root)
    meta = _read_meta(root)
    if meta is None:
        raise RunError(f"no token store in {root}")
    if meta.get("finished"):
        return TokenStore.open(root)
    n_chunks = -(-meta["n_docs"] // meta["chunk_docs"])
    parts = [root / "parts" / f"{c:07d}.npz" for c in range(n_chunks)]
    missing = [p.name for p in parts if not p.exists()]
    if missing:
        raise RunError(f"token store in {root} is missing {len(missing)} chunks (e.g. {missing[:3]}); re-run to resume")
    lengths = []
    with open(root / "ids.bin.partial", "wb") as f:
        for p in parts:
            with np.load(p) as d:
                lengths.append(d["lengths"])
                f.write(np.ascontiguousarray(d["ids"], dtype=np.int32).tobytes())
    lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    if len(lengths) != meta["n_docs"]:
        raise RunError(f"token store in {root}: {len(lengths)} documents tokenized, expected {meta['n_docs']}")
    np.save(root / "offsets.npy", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    os.replace(root / "ids.bin.partial", root / "ids.bin")
    meta.update(finished=True, n_tokens=int(lengths.sum()))
    (root / "meta.json").write_text(json.dumps(meta))
    shutil.rmtree(root / "parts", ignore_errors=True)
    return TokenStore.open(root)


def tokenize_corpus(ws, corpus: str, shards: list[int] | None, root: Path, tokenizer, args: TokenizeArgs,
                    progress: bool = False) -> TokenStore:
    """One process: the whole store (resumable: finished chunks are kept)."""
    meta, _ = begin_tokens(ws, corpus, shards, root, args)
    if not meta.get("finished"):
        tokenize_part(ws, corpus, shards, root, tokenizer, args, progress=progress)
    return finish_tokens(root)


def write_store(root: Path, doc_ids: np.ndarray, chunks, **meta) -> TokenStore:
    """A finished store from pre-tokenized chunks [(lengths (n,), ids (sum(lengths),))], written one
    chunk at a time (e.g. synthetic corpora in `stride bench scale`). `meta` is recorded in meta.json."""
    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    doc_ids = np.asarray(doc_ids, dtype=np.int64)
    lengths = []
    with open(root / "ids.bin", "wb") as f:
        for n, ids in chunks:
            n = np.asarray(n, dtype=np.int64)
            if int(n.sum()) != len(ids):
                raise StrideError(f"a chunk has {len(ids)} ids but its lengths sum to {int(n.sum())}")
            lengths.append(n)
            f.write(np.ascontiguousarray(ids, dtype=np.int32).tobytes())
    lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    if len(lengths) != len(doc_ids):
        raise StrideError(f"{len(lengths)} documents written for {len(doc_ids)} document ids")
    np.save(root / "doc_ids.npy", doc_ids)
    np.save(root / "offsets.npy", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    (root / "meta.json").write_text(json.dumps({**meta, "n_docs": int(len(doc_ids)), "n_tokens": int(lengths.sum()),
                                                "finished": True}))
    return TokenStore.open(root)
