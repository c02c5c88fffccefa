"""`attribute`: measure each prompt's loss under every operator, recover its influence vector, rank documents
(query-specific by default, with the generic component apart) and store the rows (Parquet, then DuckDB).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..method.arguments import AttributeArgs
from ..errors import InputError, RunError, StrideError
from ..method.generic import remove_generic
from .progress import Reporter, read_status
from .config import IndexConfig, REFERENCE_PROMPT_TOKENS
from .indexing import begin_run, index, load_run, load_task
from .prompts import generate, query_items, query_text, read_prompts
from .run_files import atomic_save, save_npy, write_table

logger = logging.getLogger(__name__)


ATTRIBUTION_COLUMNS = ["query_id", "prompt", "continuation", "direction", "rank", "doc_id", "score", "snippet"]


# Parquet-only columns: the prompt text actually scored (after cutting to max_tokens) and whether it was cut.
# continuation_given: the continuation is a completion the user gave (teacher forcing), not the model's own text
PROMPT_USE_COLUMNS = ["prompt_used", "truncated", "continuation_given"]


# Parquet-only columns of a stride+lexical ranking: the TF-IDF cosine and the z-sum the helpful rows are ranked by
HYBRID_COLUMNS = ["lexical", "hybrid_z"]


@dataclass
class OpenRun:
    """A finished index loaded for queries: the model task, the activation cache, the subset design
    and the fitted estimator. `influence(items)` -> (Q, N) scores in cache (doc_ids) order."""

    rdir: Path
    config: IndexConfig
    task: object
    cache: object
    design: object
    estimator: object

    @property
    def doc_ids(self) -> np.ndarray:
        return np.asarray(self.cache.doc_ids)

    def influence(self, items: list[tuple[list[int], int]], names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """items: (token ids, first scored position); names: their ids, for error messages. Returns W (Q, N),
        y (Q, K), base losses (Q,). Raises RunError when a measurement is not finite or all are 0."""
        from ..method.activations import features_in_memory

        qfeat = features_in_memory(self.task, items)
        y, base = self.estimator.measure(qfeat)
        check_measurements(self.rdir.name, y, names)
        rec = self.estimator.recover(y)
        return rec.influence_, y, base

    def generic_component(self, args: AttributeArgs, save: bool = True):
        """The query-independent component c (K_total,) of y for this run and generation setting
        (stride_core.method.generic), loaded from runs/<run>/generic.safetensors or measured on the run's
        reference queries (seeded corpus documents continued like user prompts) and saved."""
        from ..method.activations import features_in_memory
        from ..method.generic import GENERIC_FILE, GenericComponent, masked_mean, reference_prompts
        from ..store.tokens import TokenStore

        key = {"n": args.n_reference_queries, "seed": self.config.subsets.seed, "prompt_tokens": REFERENCE_PROMPT_TOKENS,
               "max_new_tokens": args.max_new_tokens, "repetition_penalty": args.repetition_penalty,
               "no_repeat_ngram_size": args.no_repeat_ngram_size, "contrast": args.contrast, "center": args.center, "loss_on": args.loss_on,
               "penalise_prompt": args.penalise_prompt}
        path = self.rdir / GENERIC_FILE
        found = GenericComponent.load(path, key)
        if found is not None:
            return found
        rows, ids = reference_prompts(TokenStore.open(self.rdir / "tokens"), args.n_reference_queries, self.config.subsets.seed,
                                      REFERENCE_PROMPT_TOKENS)
        refs = [{"query_id": f"ref{int(r)}", "prompt": None, "prompt_ids": i} for r, i in zip(rows, ids)]
        y_ref, _ = self.estimator.measure(features_in_memory(self.task, query_items(generate(self.task, refs, args), args.loss_on)))
        comp = GenericComponent(masked_mean(y_ref, self.design.members[rows]).astype(np.float32), rows, key)
        if save:
            atomic_save(comp.save, path)
        logger.info("generic component measured on %d reference queries", len(rows))
        return comp

    def encode(self, texts: list[str], names: list[str]) -> list[tuple[list[int], int]]:
        """Token items scoring every token of each text (an evaluation item used as a query); texts longer
        than the context keep their first max_tokens tokens, with a warning naming them."""
        tok, budget = self.task.tokenizer, self.task.max_tokens - 1
        out, cut = [], []
        for name, text in zip(names, texts):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            if len(ids) < 1:
                raise InputError(f"item {name!r} tokenizes to nothing")
            if len(ids) > budget:
                cut.append(str(name))
                ids = ids[:budget]
            out.append((ids, 0))
        if cut:
            logger.warning("%d items longer than the context were truncated to their first %d tokens: %s", len(cut), budget,
                           ", ".join(cut[:20]) + (" ..." if len(cut) > 20 else ""))
        return out


def check_measurements(run: str, y: np.ndarray, names: list[str] | None = None) -> None:
    """Measurements that cannot be recovered from: non-finite ones, or all 0 (inert operators: nothing to score)."""
    names = names or [f"#{i}" for i in range(len(y))]
    bad = [str(names[i]) for i in np.flatnonzero(~np.isfinite(y).all(axis=1))]
    if bad:
        raise RunError(f"run {run!r}: the measurements of {', '.join(bad[:10])} are not finite (nan or inf); the run's operators "
                       "or model produce non-finite losses on them: re-index the run (--overwrite) with a lower --lr")
    if y.size and not np.abs(y).max() > 0:
        raise RunError(f"run {run!r} has no prompts to score: every measurement is 0, so the operators change no loss "
                       "(untrained operators?); re-index with --steps >= 1 and --overwrite")


def check_operators(run: str, estimator) -> None:
    """A saved index must hold finite, trained operators: nan ones (diverged training) or all-zero ones
    (`--steps 0` in runs indexed before steps >= 1 was enforced) would rank nothing, or garbage."""
    import torch

    for m in estimator._members():
        bad = [n for n, p in m.ops.named_parameters() if not torch.isfinite(p).all()]
        if m.reference is not None and not np.isfinite(m.reference).all():
            bad.append("reference")
        if bad:
            raise RunError(f"run {run!r}: its operators hold nan or inf ({', '.join(bad)}): training diverged; re-index it "
                           "with a lower --lr (or loss weights) and --overwrite")
        if not m.ops.A.detach().abs().max() > 0:
            raise RunError(f"run {run!r} has untrained operators (every steering matrix is 0, as `--steps 0` leaves them): "
                           "re-index it with --steps >= 1 and --overwrite")


def open_run(ws, run: str, args: AttributeArgs | None = None) -> OpenRun:
    """Load a finished index (raises RunError naming the missing stage otherwise)."""
    from ..method.activations import FeatureCache
    from ..method.estimator import StrideEstimator
    from ..store.models import resolve_device
    from ..method.subsets import SubsetDesign

    args = args or AttributeArgs()
    rdir, config = load_run(ws, run)
    dev = resolve_device(args.device)
    task = load_task(config, dev)
    cache = FeatureCache.open(rdir / "cache")
    design = SubsetDesign.load(rdir / "subsets.safetensors", cache.doc_ids)
    est = StrideEstimator(task.head, config.subsets, config.operators, center=args.center, alpha=args.alpha,
                          alpha_ratio=args.alpha_ratio, lambda_rule=args.lambda_rule, positive=args.positive, device=dev).load(rdir / "operators.safetensors", design)
    check_operators(run, est)
    return OpenRun(rdir, config, task, cache, design, est)


def top_nonzero(w: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the k largest positive entries of w (N,), best first, and of the k most negative,
    worst first; ties by document order (helpful) or reverse document order (harmful), as a stable
    descending sort would give. Sorts only the non-zero entries: the Lasso's w is sparse, N can be 1M."""
    pos, neg = np.flatnonzero(w > 0), np.flatnonzero(w < 0)
    return pos[np.lexsort((pos, -w[pos]))][:k], neg[np.lexsort((-neg, w[neg]))][:k]


def attribute(ws, run: str, prompts: list[dict] | str | Path, args: AttributeArgs | None = None, out: str | Path | None = None,
              progress: bool = True, reporter: Reporter | None = None) -> pd.DataFrame:
    """Continuation + ranked helpful/harmful documents per prompt. Returns the rows (also written to
    runs/<run>/attributions.parquet, OUT when given, and the workspace DuckDB).

    Holds the run's lock (concurrent calls on one run wait for each other). Without a `reporter`,
    status.json ends `done`, or `failed` with the error; input errors found before the run is opened
    (prompts, --out, an unknown or unusable run) leave it untouched."""
    from ..store.locks import run_lock

    args = args or AttributeArgs()
    if out is not None and Path(out).suffix.lower() not in (".parquet", ".jsonl", ".csv"):
        raise InputError(f"--out {out}: use a .parquet, .jsonl or .csv file name")
    prompts = read_prompts(prompts) if isinstance(prompts, (str, Path)) else list(prompts)
    if not prompts:
        raise InputError("no prompts given")
    with run_lock(ws.run_dir(run)):
        opened = open_run(ws, run, args)
        sync_attributions(ws, run)  # a kill between the two writes of an earlier call left the DuckDB copy stale
        if reporter is not None:
            return _attribute(ws, run, opened, prompts, args, out, reporter)
        with Reporter(opened.rdir, run).finishing() as rep:
            return _attribute(ws, run, opened, prompts, args, out, rep)


def _attribute(ws, run: str, opened: OpenRun, prompts: list[dict], args: AttributeArgs, out, rep: Reporter) -> pd.DataFrame:
    from ..method.activations import features_in_memory

    config, task, cache = opened.config, opened.task, opened.cache
    rep.stage("attribute", f"{len(prompts)} prompts")
    gens = generate(task, prompts, args)
    rep.update(0.2, "measuring")
    y, base = opened.estimator.measure(features_in_memory(task, query_items(gens, args.loss_on)))  # (Q, K), (Q,)
    check_measurements(run, y, [g["query_id"] for g in gens])
    generic = None
    if args.ranking == "specific":
        rep.update(0.4, "generic component (reference queries)")
        generic = opened.generic_component(args)
    rep.update(0.6, "recovering")
    W = opened.estimator.recover(y if generic is None else remove_generic(y, generic.y_mean)).influence_  # (Q, N)
    k = min(args.top_k, W.shape[1])
    lexical = None
    if args.method == "stride+lexical":
        from ..store.text import tfidf_similarity

        rep.update(0.7, "lexical similarity (TF-IDF over the corpus)")
        lexical = tfidf_similarity(ws, config.corpus, cache.doc_ids, [query_text(g, args.loss_on) for g in gens],
                                   shards=config.shards)  # (Q, N)
    rows = ranked_rows(gens, W, base, cache.doc_ids, k, lexical)
    helped = {r["query_id"] for r in rows if r["direction"] == "helpful"}
    unranked = [g["query_id"] for g in gens if g["query_id"] not in helped]
    if unranked:
        logger.warning("%d of %d prompts have no document with a positive recovered effect (the Lasso kept none that "
                       "helps): %s", len(unranked), len(gens), ", ".join(unranked[:20]) + (" ..." if len(unranked) > 20 else ""))
    df = write_attributions(ws, run, config, rows, y, out)
    if generic is not None:
        write_generic(ws, run, config, opened.estimator.recover(generic.y_mean[None]).influence_[0], cache.doc_ids, k)
    df.attrs.update(n_prompts=len(gens), unranked=unranked)
    rep.stage("attributed", f"{len(prompts)} prompts attributed")
    return df


def summary_lines(df: pd.DataFrame, n: int = 5) -> list[str]:
    """A plain-text digest of attributions rows: every prompt (those without a helpful document too, so
    none silently drops out), its continuation and its n most helpful documents."""
    lines = []
    for qid, g in df.groupby("query_id", sort=False):
        first, helpful = g.iloc[0], g[g["direction"] == "helpful"].sort_values("rank")
        lines.append(f"\n[{qid}] {first['prompt']!r} -> {first['continuation']!r}")
        for _, r in helpful.head(n).iterrows():
            label = r.get("object") or r.get("source") or ""
            lines.append(f"  {int(r['rank']):>2}. doc {int(r['doc_id']):>6}  {r['score']:+.2e}  {label}  {r['snippet'][:70]!r}")
        if helpful.empty:
            lines.append(f"  (no document with a positive recovered effect; {int((g['direction'] == 'harmful').sum())} harmful)")
    return lines


def ranked_rows(gens: list[dict], W: np.ndarray, base: np.ndarray, doc_ids, k: int, lexical: np.ndarray | None = None) -> list[dict]:
    """The attributions rows: each prompt's k most helpful and k most harmful non-zero documents. With
    `lexical` (Q, N) (method stride+lexical) the helpful ones are the k largest z(W) + z(lexical) (any
    document, best first) and the rows carry the cosine and the z-sum; `score` is always STRIDE's."""
    from ..store.text import zscore_rows

    rows = []
    hybrid = None if lexical is None else zscore_rows(W) + zscore_rows(lexical)  # (Q, N)
    for qi, g in enumerate(gens):
        helpful, harmful = top_nonzero(W[qi], k)
        if hybrid is not None:
            helpful = np.lexsort((np.arange(W.shape[1]), -hybrid[qi]))[:k]
        for direction, idx in (("helpful", helpful), ("harmful", harmful)):
            for rank, j in enumerate(idx, 1):
                row = {"query_id": g["query_id"], "prompt": g["prompt"], "continuation": g["continuation"], "direction": direction,
                       "rank": rank, "doc_id": int(doc_ids[j]), "score": float(W[qi, j]), "query_loss": float(base[qi]),
                       "prompt_used": g.get("prompt_used", g["prompt"]), "truncated": bool(g.get("truncated", False)),
                       "continuation_given": g.get("completion") is not None}
                if hybrid is not None:
                    row.update(lexical=float(lexical[qi, j]), hybrid_z=float(hybrid[qi, j]))
                rows.append(row)
    return rows


def write_generic(ws, run: str, config: IndexConfig, w: np.ndarray, doc_ids, k: int) -> pd.DataFrame:
    """The "helps every prompt" view: Lasso of the generic component, top k per direction, with document
    metadata, to runs/<run>/generic.parquet."""
    from ..store.corpus import corpus_info, load_documents
    from ..method.generic import GENERIC_TABLE

    helpful, harmful = top_nonzero(w, k)
    df = pd.DataFrame([{"direction": d, "rank": r, "doc_id": int(doc_ids[j]), "score": float(w[j])}
                       for d, idx in (("helpful", helpful), ("harmful", harmful)) for r, j in enumerate(idx, 1)],
                      columns=["direction", "rank", "doc_id", "score"])
    meta_cols = corpus_info(ws, config.corpus)["metadata_columns"]
    if len(df):
        docs = load_documents(ws, config.corpus, columns=["doc_id", "text", *meta_cols], doc_ids=sorted(set(df["doc_id"])))
        docs["snippet"] = docs["text"].map(lambda t: " ".join(t.split())[:300])
        df = df.merge(docs.drop(columns=["text"]), on="doc_id", how="left")
    atomic_save(lambda p: df.to_parquet(p, index=False), ws.run_dir(run) / GENERIC_TABLE)
    return df


def write_attributions(ws, run: str, config: IndexConfig, rows: list[dict], y: np.ndarray, out=None) -> pd.DataFrame:
    """Ranked rows -> the attributions table (document metadata and snippet joined), written to
    runs/<run>/attributions.parquet, OUT when given and the workspace DuckDB; y (Q, K) is kept beside it.

    attributions.parquet is the one source of truth, replaced atomically under the run's lock; the
    DuckDB rows are derived from it (sync_attributions), so the two can only differ until the next sync."""
    from ..store.corpus import corpus_info, load_documents
    from ..store.locks import run_lock

    rdir = ws.run_dir(run)
    hybrid_cols = HYBRID_COLUMNS if rows and "hybrid_z" in rows[0] else []
    df = pd.DataFrame(rows, columns=ATTRIBUTION_COLUMNS[:-1] + ["query_loss", *PROMPT_USE_COLUMNS, *hybrid_cols])
    meta_cols = corpus_info(ws, config.corpus)["metadata_columns"]
    if len(df):
        docs = load_documents(ws, config.corpus, columns=["doc_id", "text", *meta_cols], doc_ids=sorted(set(df["doc_id"])))
        docs["snippet"] = docs["text"].map(lambda t: " ".join(t.split())[:300])
        df = df.merge(docs.drop(columns=["text"]), on="doc_id", how="left")
    else:
        df["snippet"] = pd.Series(dtype=str)
        for c in meta_cols:
            df[c] = pd.Series(dtype=str)
    df = df[ATTRIBUTION_COLUMNS + ["query_loss", *PROMPT_USE_COLUMNS, *hybrid_cols, *meta_cols]]
    with run_lock(rdir):
        atomic_save(lambda p: save_npy(p, y), rdir / "last_measurements.npy")  # per-query measurements, for auditability
        atomic_save(lambda p: df.to_parquet(p, index=False), rdir / "attributions.parquet")
        sync_attributions(ws, run, log_repair=False)
    if out is not None:
        write_table(df, Path(out))
    return df


def sync_attributions(ws, run: str, log_repair: bool = True) -> bool:
    """Derive run `run`'s rows of the DuckDB `attributions` table from runs/<run>/attributions.parquet, the
    source of truth (no file: no rows). The sha1 of the file they were derived from is recorded in
    `attribution_sources` in the same transaction, so an up-to-date copy is left alone and a copy left
    stale (a kill between the file and the database write) is rebuilt. Returns whether it wrote."""
    import hashlib

    path = ws.run_dir(run) / "attributions.parquet"
    digest = hashlib.sha1(path.read_bytes()).hexdigest() if path.exists() else None
    if not ws.db_path.exists():
        if digest is None:
            return False
    else:  # the common case, an up-to-date copy, needs only a read-only look
        with ws.connect(read_only=True) as con:
            has = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'attribution_sources'").fetchone()[0]
            recorded = con.execute("SELECT sha1 FROM attribution_sources WHERE run = ?", [run]).fetchone() if has else None
        if recorded is not None and recorded[0] == digest:
            return False
    with ws.connect() as con:
        con.execute("""CREATE TABLE IF NOT EXISTS attributions (run VARCHAR, query_id VARCHAR, prompt VARCHAR, continuation VARCHAR,
                       direction VARCHAR, rank INTEGER, doc_id BIGINT, score DOUBLE, snippet VARCHAR, query_loss DOUBLE, metadata VARCHAR)""")
        con.execute("CREATE TABLE IF NOT EXISTS attribution_sources (run VARCHAR PRIMARY KEY, sha1 VARCHAR, n_rows BIGINT)")
        recorded = con.execute("SELECT sha1 FROM attribution_sources WHERE run = ?", [run]).fetchone()
        if recorded is not None and recorded[0] == digest:
            return False
        df = pd.read_parquet(path) if digest else pd.DataFrame(columns=ATTRIBUTION_COLUMNS + ["query_loss"])
        fixed = ATTRIBUTION_COLUMNS + ["query_loss"]
        meta = [c for c in df.columns if c not in fixed and c not in PROMPT_USE_COLUMNS and c not in HYBRID_COLUMNS]
        rows = df[fixed].copy()
        rows.insert(0, "run", run)
        rows["metadata"] = df[meta].apply(lambda r: json.dumps({k: (None if pd.isna(v) else v) for k, v in r.items()}, default=str), axis=1) if meta and len(df) else "{}"
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute("DELETE FROM attributions WHERE run = ?", [run])
            if len(rows):
                con.register("new_rows", rows)
                con.execute("INSERT INTO attributions SELECT run, query_id, prompt, continuation, direction, rank, doc_id, score, snippet, query_loss, metadata FROM new_rows")
                con.unregister("new_rows")
            con.execute("DELETE FROM attribution_sources WHERE run = ?", [run])
            con.execute("INSERT INTO attribution_sources VALUES (?, ?, ?)", [run, digest, len(rows)])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    if recorded is not None and log_repair:
        logger.warning("run %s: the DuckDB attribution rows were out of date with attributions.parquet; rebuilt them", run)
    return True


def run_all(ws, run: str, config: IndexConfig, prompts, attr_args: AttributeArgs | None = None, device: str = "auto",
            overwrite: bool = False, progress: bool = True, out=None) -> pd.DataFrame:
    """index + attribute in one job, with one status file (what the dashboard starts), under the run's lock."""
    from ..store.locks import run_lock

    from ..store.models import resolve_device

    rdir = ws.run_dir(run)
    with run_lock(rdir):
        # Inputs refused here (prompts, different arguments, a K larger than the corpus) leave the status of
        # an existing run as it was: a refused command must not show a finished run as failed. A job the
        # dashboard queued for a new run gets the error in its status.
        try:
            if out is not None and Path(out).suffix.lower() not in (".parquet", ".jsonl", ".csv"):
                raise InputError(f"--out {out}: use a .parquet, .jsonl or .csv file name")
            prompts = read_prompts(prompts) if isinstance(prompts, (str, Path)) else list(prompts)
            begin_run(ws, run, config, resolve_device(device), overwrite)
        except StrideError as exc:
            prev = read_status(rdir)
            if prev is not None and prev.state == "queued":
                Reporter(rdir, run).finish("failed", str(exc))
            raise
        with Reporter(rdir, run).finishing() as rep:
            index(ws, run, config, device=device, overwrite=overwrite, progress=progress, reporter=rep)
            attr_args = attr_args or AttributeArgs(device=device)
            return attribute(ws, run, prompts, attr_args, out=out, progress=progress, reporter=rep)


def run_state(ws, run: str) -> str | None:
    st = read_status(ws.run_dir(run))
    return st.state if st else None
