"""Data selection: which training documents to keep for a target task, and which hurt it.

Every document gets two scores from the target examples (each used as a query against the index):
- score: its STRIDE influence (sparse Lasso, loss units) averaged over the targets; positive means
  training on it lowers the targets' loss;
- matched_score: the dense matched-filter statistic, mean over the document's S subsets of the
  targets' measured loss drops minus the mean over all subsets, averaged over targets (loss units).
  It orders the many documents the sparse solution leaves at exactly 0.
The keep-list is the top `budget` documents by (score, matched_score) with a near-duplicate guard
(MinHash estimate of the word 5-gram Jaccard against documents already kept; exact duplicates from
the corpus import always count). The drop-list is every document whose net score is negative."""

from __future__ import annotations

import logging
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError, StrideError
from ..store.items import read_items

logger = logging.getLogger(__name__)

COLUMNS = ["doc_id", "decision", "rank", "score", "matched_score", "n_targets_helped", "n_targets_hurt", "duplicate_of"]


@dataclass
class SelectionArgs:
    """Budget, ordering and near-duplicate guard of the data-selection audit."""

    budget: int
    score: str = "lasso"  # "lasso": order by sparse influence, then matched; "matched": by the dense statistic only
    dedup_threshold: float = 0.8  # estimated Jaccard of word 5-grams above which a document duplicates a kept one
    max_targets: int = 10_000
    text_field: str | None = None  # target field(s) holding an example's text, comma-separated (default: text)
    lambda_rule: str = "1se"  # the Lasso's lambda per target, as `stride attribute --lambda-rule`
    device: str = "auto"

    def __post_init__(self):
        if not isinstance(self.budget, (int, np.integer)) or isinstance(self.budget, bool) or self.budget < 1:
            raise StrideError("budget must be a positive integer")
        if self.score not in ("lasso", "matched"):
            raise StrideError("score must be 'lasso' or 'matched'")
        if not 0 < self.dedup_threshold <= 1:  # also refuses nan
            raise StrideError("dedup_threshold must be in (0, 1]")
        if not isinstance(self.max_targets, int) or self.max_targets < 1:
            raise StrideError("max_targets must be a positive integer")
        if self.lambda_rule not in ("1se", "min"):
            raise StrideError("lambda_rule must be '1se' or 'min'")


class MinHashGuard:
    """Near-duplicate detector over the documents accepted so far (MinHash, 64 hashes in 16 LSH bands)."""

    P = (1 << 61) - 1

    def __init__(self, threshold: float, n_hash: int = 64, bands: int = 16, shingle: int = 5, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, 1 << 31, n_hash, dtype=np.uint64)
        self.b = rng.integers(0, 1 << 31, n_hash, dtype=np.uint64)
        self.threshold, self.bands, self.rows, self.shingle = threshold, bands, n_hash // bands, shingle
        self.buckets: dict[tuple, list[int]] = {}
        self.sigs: dict[int, np.ndarray] = {}

    def signature(self, text: str) -> np.ndarray:
        from ..store.text import words

        toks = [w for w, _, _ in words(text)]
        n = min(self.shingle, max(1, len(toks)))
        # crc32, not hash(): str hashes are salted per process, and the same run must give the same keep-list
        sh = np.array(sorted({zlib.crc32("\x1f".join(toks[i:i + n]).encode()) & 0x7FFFFFFF
                              for i in range(max(1, len(toks) - n + 1))}) or [0], dtype=np.uint64)
        return ((self.a[:, None] * sh[None, :] + self.b[:, None]) % np.uint64(self.P)).min(axis=1)

    def duplicate_of(self, text: str) -> tuple[int | None, np.ndarray]:
        sig = self.signature(text)
        for band in range(self.bands):
            key = (band, sig[band * self.rows:(band + 1) * self.rows].tobytes())
            for other in self.buckets.get(key, ()):
                if float(np.mean(self.sigs[other] == sig)) >= self.threshold:
                    return other, sig
        return None, sig

    def add(self, doc_id: int, sig: np.ndarray):
        self.sigs[doc_id] = sig
        for band in range(self.bands):
            self.buckets.setdefault((band, sig[band * self.rows:(band + 1) * self.rows].tobytes()), []).append(doc_id)


def matched_scores(y: np.ndarray, members: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """(Q, N): mean of y_{q,k} over document j's subsets minus the mean over all K subsets. y (Q, K), members (N, S)."""
    yc = y - y.mean(axis=1, keepdims=True)
    out = np.empty((y.shape[0], members.shape[0]), dtype=np.float32)
    for a in range(0, members.shape[0], chunk):
        out[:, a:a + chunk] = yc[:, members[a:a + chunk]].mean(axis=-1)
    return out


def rank_documents(W: np.ndarray, matched: np.ndarray, order_by: str = "lasso") -> np.ndarray:
    """Document indices, best first: by mean sparse influence then mean matched score ("lasso"), or by
    the matched score alone ("matched")."""
    s, m = W.mean(axis=0), matched.mean(axis=0)
    return np.lexsort((-m, -s)) if order_by == "lasso" else np.argsort(-m, kind="stable")


def audit_select(ws, run: str, target, args: SelectionArgs, out=None, progress: bool = True, reporter=None) -> pd.DataFrame:
    """Keep-list (top `budget`, near-duplicates skipped) and drop-list (net harmful on the targets).
    Written to runs/<run>/selection.parquet, the DuckDB table `selection`, and OUT when given."""
    from ..store.corpus import corpus_info
    from ..runs.indexing import load_run
    from ..runs.progress import AUDIT_STATUS_FILE, Reporter

    if out is not None and Path(out).suffix.lower() not in (".parquet", ".jsonl", ".csv"):
        raise InputError(f"--out {out}: use a .parquet, .jsonl or .csv file name")
    targets = read_items(target, "target", max_items=args.max_targets, text_fields=args.text_field)
    rdir, config = load_run(ws, run)
    info = corpus_info(ws, config.corpus)
    n_docs = info["n_docs"] if config.shards is None else None
    if n_docs is not None and args.budget > n_docs:
        raise InputError(f"budget {args.budget} is larger than corpus {config.corpus!r} ({n_docs} documents)")
    rep = reporter or Reporter(rdir, run, filename=AUDIT_STATUS_FILE)
    if reporter is not None:
        return _audit_select(ws, run, target, args, out, targets, rdir, config, info, rep)
    with rep.finishing():
        return _audit_select(ws, run, target, args, out, targets, rdir, config, info, rep)


def _audit_select(ws, run, target, args, out, targets, rdir, config, info, rep):
    from ..method.arguments import AttributeArgs
    from ..store.corpus import load_documents
    from ..runs.attribution import open_run
    from ..runs.run_files import atomic_save, write_table
    from ..store.workspace import replace_run_rows

    t0 = time.time()
    rep.stage("selection: influence", f"{len(targets)} target examples")

    opened = open_run(ws, run, AttributeArgs(device=args.device, lambda_rule=args.lambda_rule))
    doc_ids = opened.doc_ids
    if args.budget > len(doc_ids):
        raise InputError(f"budget {args.budget} is larger than the run's {len(doc_ids)} documents")
    W, y, _ = opened.influence(opened.encode([t.text for t in targets], [t.item_id for t in targets]))  # (Q, N), (Q, K)
    matched = matched_scores(y, opened.design.members)  # (Q, N)
    score, mscore = W.mean(axis=0), matched.mean(axis=0)
    helped, hurt = (W > 0).sum(axis=0), (W < 0).sum(axis=0)
    order = rank_documents(W, matched, args.score)

    rep.update(0.7, "near-duplicate guard")
    exact = load_documents(ws, config.corpus, ["doc_id", "duplicate_of"], shards=config.shards)
    exact_of = {int(d): int(o) for d, o in zip(exact["doc_id"], exact["duplicate_of"]) if pd.notna(o)}
    guard = MinHashGuard(args.dedup_threshold)
    rows, kept, pos = [], 0, 0
    chunk = max(256, args.budget // 4)
    while kept < args.budget and pos < len(order):
        idx = order[pos:pos + chunk]
        pos += len(idx)
        texts = load_documents(ws, config.corpus, ["doc_id", "text"], doc_ids=[int(doc_ids[j]) for j in idx])
        text_of = dict(zip(texts["doc_id"].astype(int), texts["text"]))
        for j in idx:
            d = int(doc_ids[j])
            dup, sig = guard.duplicate_of(text_of[d])
            if dup is None and exact_of.get(d) in guard.sigs:
                dup = exact_of[d]
            base = {"doc_id": d, "score": float(score[j]), "matched_score": float(mscore[j]),
                    "n_targets_helped": int(helped[j]), "n_targets_hurt": int(hurt[j])}
            if dup is not None:
                rows.append({**base, "decision": "duplicate", "rank": None, "duplicate_of": dup})
                continue
            guard.add(d, sig)
            kept += 1
            rows.append({**base, "decision": "keep", "rank": kept, "duplicate_of": None})
            if kept == args.budget:
                break
    if kept < args.budget:
        logger.warning("only %d documents are left after removing near-duplicates (budget %d)", kept, args.budget)
    kept_ids = {r["doc_id"] for r in rows if r["decision"] == "keep"}
    for rank, j in enumerate(np.argsort(score, kind="stable"), 1):
        if score[j] >= 0:
            break
        if int(doc_ids[j]) not in kept_ids:
            rows.append({"doc_id": int(doc_ids[j]), "decision": "drop", "rank": rank, "score": float(score[j]),
                         "matched_score": float(mscore[j]), "n_targets_helped": int(helped[j]), "n_targets_hurt": int(hurt[j]),
                         "duplicate_of": None})
    df = pd.DataFrame(rows, columns=COLUMNS)
    df["rank"] = df["rank"].astype("Int64")
    df["duplicate_of"] = df["duplicate_of"].astype("Int64")
    meta_cols = info["metadata_columns"]
    docs = load_documents(ws, config.corpus, ["doc_id", "text", *meta_cols], doc_ids=df["doc_id"].tolist())
    docs["snippet"] = docs["text"].map(lambda t: " ".join(t.split())[:300])
    df = df.merge(docs.drop(columns=["text"]), on="doc_id", how="left")

    atomic_save(lambda p: df.to_parquet(p, index=False), rdir / "selection.parquet")
    # The counts the page words its summary from: the Lasso leaves most documents at exactly 0.
    counts_all = {"n_docs": int(len(doc_ids)), "n_nonzero": int((score != 0).sum()), "n_positive": int((score > 0).sum()),
                  "n_negative": int((score < 0).sum())}
    (rdir / "selection_args.json").write_text(pd.Series({**asdict(args), "target": str(target), "n_targets": len(targets),
                                                         **counts_all}).to_json(indent=1))
    replace_run_rows(ws, "selection", run, df, COLUMNS + ["snippet"])
    if out is not None:
        write_table(df, Path(out))
    counts = df["decision"].value_counts().to_dict()
    rep.stage("selection done", f"keep {counts.get('keep', 0)}, drop {counts.get('drop', 0)}, near-duplicates skipped "
                                f"{counts.get('duplicate', 0)} ({time.time() - t0:.0f}s)")
    return df
