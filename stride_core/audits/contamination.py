"""Contamination audit: which training documents leak a benchmark's items.

Two independent kinds of evidence per (item, document) pair:

- overlap_score in [0, 1]: the fraction of the item's distinct word n-grams (n = `ngram`, lowercased
  \\w+ words, one character per word in CJK scripts; shorter items use all their words as one n-gram)
  that occur in the document. Verbatim copies score 1 wherever they sit inside a longer document;
  light edits lower it gradually.
- influence_z: a model-dependent memorisation signal. Each item is a query; for document j the
  matched-filter statistic m_j = mean of y_{item,k} over j's S subsets (how much steering towards
  subsets that contain j lowers the item's loss) is regressed on the TF-IDF cosine between item and
  document, and the residual is robust-standardised over all N documents (median / MAD). A large z
  means "more influence on this item than its lexical similarity explains". The sparse Lasso score of
  the document (loss units, as on the Influence page) is reported as influence_score.

combined_score = overlap_score / overlap_threshold + max(influence_z, 0) / z_threshold; a pair is
flagged (`leaked`) when combined_score >= 1 and it shares at least `min_overlap` of the item's
n-grams (influence corroborates lexical evidence: a near copy with light edits is flagged, a document
with no shared n-gram is not), or when influence_z >= influence_only_z (off by default: on the
contamination benchmark the z statistic alone flagged 75% of clean items at the Bonferroni
threshold, BENCHMARKS.md). z_threshold "auto" is the Bonferroni bound for N documents at 5% per item.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError, StrideError
from ..store.items import Item, read_items
from ..store.text import tfidf_similarity, words

logger = logging.getLogger(__name__)

PAIR_COLUMNS = ["item_id", "doc_id", "overlap_score", "influence_score", "influence_z", "combined_score", "leaked",
                "flag_overlap", "flag_influence", "evidence_kind", "evidence", "item_text"]
ITEM_COLUMNS = ["item_id", "leaked", "n_flagged", "n_copies", "max_overlap", "max_influence_z", "top_doc_id", "item_loss",
                "item_text"]


@dataclass
class ContaminationArgs:
    """Thresholds and sizes of the contamination audit (see the module docstring for the scores)."""

    ngram: int = 8
    overlap_threshold: float = 0.5
    z_threshold: float | str = "auto"
    use_influence: bool = True
    min_overlap: float = 0.1  # pairs below this overlap (and below half the z threshold) are not reported
    influence_only_z: float = float("inf")  # z that flags a pair without shared n-grams (inf: never)
    max_pairs_per_item: int = 20  # reported pairs per item besides the flagged ones
    batch_docs: int = 2000
    max_items: int = 10_000
    text_field: str | None = None  # benchmark field(s) holding an item's text, comma-separated (default: text)
    device: str = "auto"

    def __post_init__(self):
        from ..method.arguments import check_float, check_int

        check_int(self.ngram, "ngram", 1, 64)
        check_float(self.overlap_threshold, "overlap_threshold", 0.0, 1.0, lo_open=True)
        if self.z_threshold != "auto":
            check_float(self.z_threshold, "z_threshold ('auto' or a number)", 0.0, lo_open=True)
        # inf is the documented "never" of influence_only_z; nan or <= 0 would flag everything or nothing silently
        if not (isinstance(self.influence_only_z, (int, float)) and self.influence_only_z > 0):
            raise StrideError(f"influence_only_z must be > 0 (inf: never), got {self.influence_only_z!r}")
        check_float(self.min_overlap, "min_overlap", 0.0, 1.0)
        check_int(self.max_pairs_per_item, "max_pairs_per_item", 0)
        check_int(self.batch_docs, "batch_docs", 1)
        check_int(self.max_items, "max_items", 1)

    def z_for(self, n_docs: int) -> float:
        if self.z_threshold != "auto":
            return float(self.z_threshold)
        return statistics.NormalDist().inv_cdf(1 - 0.05 / max(2, n_docs))


# ------------------------------------------------------------------------------------------ overlap


def _segments(texts: list[str], n: int) -> list[list[str]]:
    """Word lists of the segments, each merged with the next until it has n words (the last short one
    joins the previous)."""
    out: list[list[str]] = []
    cur: list[str] = []
    for text in texts:
        cur = cur + [w for w, _, _ in words(text)]
        if len(cur) >= n:
            out.append(cur)
            cur = []
    if cur:
        if out:
            out[-1] = out[-1] + cur
        else:
            out.append(cur)
    return out


class NgramIndex:
    """Word n-grams of all items; scan(text) finds, per item, which of its n-grams a document holds."""

    def __init__(self, texts: list, n: int):
        """texts: one string per item, or a list of segments (e.g. question and answer fields) whose
        n-grams do not cross segment boundaries, so a copy that orders the fields differently still
        matches; a segment shorter than n words stays joined to its neighbour."""
        self.n_of: list[int] = []
        self.size: list[int] = []
        self.index: dict[int, list[int]] = {}
        for q, text in enumerate(texts):
            segs = _segments([text] if isinstance(text, str) else list(text), n)
            n_words = sum(len(t) for t in segs)
            nq = max(1, min(n, n_words))
            grams = {hash(tuple(t[i:i + nq])) for t in segs for i in range(max(1, len(t) - nq + 1))} if n_words else set()
            self.n_of.append(nq)
            self.size.append(len(grams))
            for g in grams:
                self.index.setdefault(g, []).append(q)
        self.ns = sorted(set(self.n_of))

    def scan(self, text: str) -> dict[int, tuple[float, int, int]]:
        """{item: (containment, char start, char end of the longest run of matched n-grams)}."""
        ws = words(text)
        toks = [w for w, _, _ in ws]
        found: dict[int, dict] = {}
        for n in self.ns:
            for i in range(len(toks) - n + 1):
                g = hash(tuple(toks[i:i + n]))
                for q in self.index.get(g, ()):
                    if self.n_of[q] == n:
                        f = found.setdefault(q, {"grams": set(), "pos": []})
                        f["grams"].add(g)
                        f["pos"].append(i)
        out = {}
        for q, f in found.items():
            pos = sorted(set(f["pos"]))
            # the longest region of matched windows that overlap or touch (gap <= n words)
            n = self.n_of[q]
            best, start, prev = (pos[0], pos[0]), pos[0], pos[0]
            for b in pos[1:] + [None]:
                if b is None or b - prev > n:
                    if prev - start > best[1] - best[0]:
                        best = (start, prev)
                    start = b
                prev = b
            s, e = best
            last = min(len(ws) - 1, e + self.n_of[q] - 1)
            out[q] = (len(f["grams"]) / max(1, self.size[q]), ws[s][1], ws[last][2])
        return out


def evidence_span(text: str, start: int, end: int, context: int = 60, limit: int = 600) -> str:
    a, b = max(0, start - context), min(len(text), end + context)
    span = text[a:b]
    if len(span) > limit:
        span = span[:limit] + " …"
    return ("… " if a > 0 else "") + " ".join(span.split()) + (" …" if b < len(text) else "")


# ------------------------------------------------------------------------------------------ audit


def _robust_z(x: np.ndarray) -> np.ndarray:
    """Row-wise (x - median) / (1.4826 MAD); rows with MAD 0 fall back to the standard deviation, then to 0."""
    med = np.median(x, axis=1, keepdims=True)
    mad = 1.4826 * np.median(np.abs(x - med), axis=1, keepdims=True)
    sd = x.std(axis=1, keepdims=True)
    scale = np.where(mad > 1e-12, mad, np.where(sd > 1e-12, sd, np.inf))
    return (x - med) / scale


def memorisation_z(y: np.ndarray, members: np.ndarray, lexical: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """(Q, N) influence z: matched-filter statistic mean_{k in subsets(j)} y_{q,k}, minus its linear fit on
    lexical similarity (per item), robust-standardised over documents. y (Q, K), members (N, S), lexical (Q, N)."""
    from .selection import matched_scores

    Q = y.shape[0]
    m = matched_scores(y, members, chunk)  # per-item constant shifts cancel in the fit and the median below
    resid = np.empty_like(m)
    for q in range(Q):
        x = lexical[q].astype(np.float64)
        xc = x - x.mean()
        b = float(xc @ (m[q] - m[q].mean()) / (xc @ xc)) if xc @ xc > 1e-12 else 0.0
        resid[q] = m[q] - b * x
    return _robust_z(resid).astype(np.float32)


def audit_contamination(ws, run: str, benchmark, args: ContaminationArgs | None = None, out=None, progress: bool = True,
                        reporter=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Flag training documents that leak benchmark items. Returns (pairs, items); both are written to
    runs/<run>/contamination.parquet and contamination_items.parquet, the workspace DuckDB tables
    `contamination` / `contamination_items`, and OUT (pairs) plus OUT's `<stem>_items` sibling."""
    from ..store.corpus import corpus_info
    from ..runs.indexing import load_run
    from ..runs.progress import AUDIT_STATUS_FILE, Reporter

    args = args or ContaminationArgs()
    if out is not None and Path(out).suffix.lower() not in (".parquet", ".jsonl", ".csv"):
        raise InputError(f"--out {out}: use a .parquet, .jsonl or .csv file name")
    items: list[Item] = read_items(benchmark, "benchmark", max_items=args.max_items, text_fields=args.text_field)
    rdir, config = load_run(ws, run)  # raises for an unknown or unfinished run before any work
    info = corpus_info(ws, config.corpus)
    rep = reporter or Reporter(rdir, run, filename=AUDIT_STATUS_FILE)
    if reporter is not None:
        return _audit_contamination(ws, run, benchmark, args, out, items, rdir, config, info, rep)
    with rep.finishing():
        return _audit_contamination(ws, run, benchmark, args, out, items, rdir, config, info, rep)


def _audit_contamination(ws, run, benchmark, args, out, items, rdir, config, info, rep):
    from ..store.corpus import load_documents
    from ..runs.attribution import open_run
    from ..runs.run_files import atomic_save, write_table
    from ..store.workspace import replace_run_rows

    t0 = time.time()
    texts = [it.text for it in items]

    # 1. overlap scan (streamed) + lexical similarity --------------------------------------------
    rep.stage("contamination: overlap", f"{len(items)} items against corpus {config.corpus} ({info['n_docs']} documents)")
    index = NgramIndex([list(it.segments) or it.text for it in items], args.ngram)
    hits: dict[int, dict[int, tuple[float, str]]] = {q: {} for q in range(len(items))}  # item -> doc_id -> (overlap, evidence)

    def scan(doc_id: int, text: str):
        for q, (c, a, b) in index.scan(text).items():
            if c >= args.min_overlap:
                hits[q][doc_id] = (c, evidence_span(text, a, b))

    if args.use_influence:
        opened = open_run(ws, run, _attr_args(args))
        doc_ids = opened.doc_ids
        lexical = tfidf_similarity(ws, config.corpus, doc_ids, texts, args.batch_docs, scan, lambda f: rep.update(0.4 * f),
                                    shards=config.shards)
        rep.stage("contamination: influence", f"{len(items)} items as queries")
        W, y, base = opened.influence(opened.encode(texts, [it.item_id for it in items]))  # (Q, N), (Q, K), (Q,)
        Z = memorisation_z(y, opened.design.members, lexical)  # (Q, N)
        z_thr = args.z_for(len(doc_ids))
    else:
        from ..store.corpus import iter_documents

        n_seen = 0
        for batch in iter_documents(ws, config.corpus, ["doc_id", "text"], args.batch_docs, shards=config.shards):
            for d, t in zip(batch["doc_id"], batch["text"]):
                scan(int(d), t)
            n_seen += len(batch)
            rep.update(0.8 * n_seen / max(1, info["n_docs"]))
        doc_ids = np.array(sorted({d for h in hits.values() for d in h}), dtype=np.int64)
        W = Z = np.full((len(items), len(doc_ids)), np.nan, dtype=np.float32)  # not computed
        base = np.full(len(items), np.nan, dtype=np.float32)
        z_thr = float("inf")
    col = {int(d): i for i, d in enumerate(doc_ids)}

    # 2. pairs --------------------------------------------------------------------------------------
    rep.update(0.9, "combining evidence")
    rows = []
    for q, it in enumerate(items):
        cand = {d for d in hits[q] if d in col}
        if args.use_influence:
            cand |= {int(doc_ids[j]) for j in np.flatnonzero(Z[q] >= z_thr / 2)}
        scored = []
        for d in cand:
            j = col[d]
            ov = hits[q].get(d, (0.0, ""))[0]
            z = float(Z[q, j])
            comb = ov / args.overlap_threshold + (max(z, 0.0) / z_thr if args.use_influence else 0.0)
            flag = (comb >= 1.0 and ov >= args.min_overlap) or (args.use_influence and z >= args.influence_only_z)
            scored.append((comb, d, j, ov, z, flag))
        scored.sort(key=lambda r: (-r[0], r[1]))
        keep = [r for r in scored if r[5]] + [r for r in scored if not r[5]][: args.max_pairs_per_item]
        for comb, d, j, ov, z, flag in keep:
            f_ov, f_inf = ov >= args.overlap_threshold, args.use_influence and z >= z_thr
            kind = "+".join(k for k, on in (("overlap", ov > 0), ("influence", args.use_influence and z >= z_thr / 2)) if on) or "none"
            ev = hits[q].get(d, (0.0, ""))[1]
            rows.append({"item_id": it.item_id, "doc_id": d, "overlap_score": ov, "influence_score": float(W[q, j]),
                         "influence_z": z, "combined_score": comb, "leaked": bool(flag), "flag_overlap": bool(f_ov),
                         "flag_influence": bool(f_inf), "evidence_kind": kind, "evidence": ev,
                         "item_text": _snippet(it.text)})
    pairs = pd.DataFrame(rows, columns=PAIR_COLUMNS)
    need_text = sorted({int(d) for d, e in zip(pairs["doc_id"], pairs["evidence"]) if not e})
    meta_cols = info["metadata_columns"]
    if len(pairs):
        docs = load_documents(ws, config.corpus, columns=["doc_id", "text", *meta_cols], doc_ids=sorted(set(pairs["doc_id"])))
        starts = {int(d): "(no shared n-gram) document begins: " + _snippet(t) for d, t in zip(docs["doc_id"], docs["text"]) if int(d) in need_text}
        pairs["evidence"] = [e or starts.get(int(d), "") for d, e in zip(pairs["doc_id"], pairs["evidence"])]
        pairs = pairs.merge(docs.drop(columns=["text"]), on="doc_id", how="left")
    else:
        for c in meta_cols:
            pairs[c] = pd.Series(dtype=str)
    pairs = pairs[PAIR_COLUMNS[:2] + meta_cols + PAIR_COLUMNS[2:]]
    pairs = pairs.sort_values(["item_id", "combined_score"], ascending=[True, False], kind="stable").reset_index(drop=True)
    summary = _item_summary(items, pairs, base)

    # 3. persist (atomic files, one DuckDB transaction per table) ------------------------------------
    atomic_save(lambda p: pairs.to_parquet(p, index=False), rdir / "contamination.parquet")
    atomic_save(lambda p: summary.to_parquet(p, index=False), rdir / "contamination_items.parquet")
    (rdir / "contamination_args.json").write_text(pd.Series({**asdict(args), "benchmark": str(benchmark),
                                                               "z_threshold_used": z_thr}).to_json(indent=1))
    replace_run_rows(ws, "contamination", run, pairs, [c for c in pairs.columns if c not in meta_cols])
    replace_run_rows(ws, "contamination_items", run, summary, ITEM_COLUMNS)
    if out is not None:
        out = Path(out)
        write_table(pairs, out)
        write_table(summary, out.with_name(out.stem + "_items" + out.suffix))
    n_leaked = int(summary["leaked"].sum())
    rep.stage("contamination done", f"{n_leaked} of {len(items)} items flagged as leaked ({time.time() - t0:.0f}s)")
    logger.info("contamination audit: %d of %d items leaked, %d flagged pairs", n_leaked, len(items), int(pairs["leaked"].sum()))
    return pairs, summary


def _attr_args(args: ContaminationArgs):
    from ..method.arguments import AttributeArgs

    return AttributeArgs(device=args.device)


def _snippet(text: str, n: int = 200) -> str:
    t = " ".join(text.split())
    return t if len(t) <= n else t[:n] + " …"


def _item_summary(items: list[Item], pairs: pd.DataFrame, base: np.ndarray) -> pd.DataFrame:
    rows = []
    for q, it in enumerate(items):
        p = pairs[pairs["item_id"] == it.item_id]
        flagged = p[p["leaked"]]
        rows.append({"item_id": it.item_id, "leaked": bool(len(flagged)), "n_flagged": int(len(flagged)),
                     "n_copies": int(p["flag_overlap"].sum()), "max_overlap": float(p["overlap_score"].max()) if len(p) else 0.0,
                     "max_influence_z": float(p["influence_z"].max()) if len(p) else 0.0,
                     "top_doc_id": int(p["doc_id"].iloc[0]) if len(p) else None, "item_loss": float(base[q]),
                     "item_text": _snippet(it.text)})
    return pd.DataFrame(rows, columns=ITEM_COLUMNS)
