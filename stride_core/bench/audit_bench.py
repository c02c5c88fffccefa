"""Benchmarks of the two audits on a corpus with planted truth.

`prepare` builds, once per output folder, an audit-bench workspace:
- held-out pydocs documents become benchmark items (their first `item_words` words); leaked items get
  1, 2, 4 or 8 copies in the corpus, alternately as documents of their own and embedded in a host
  document; half of the leaked items are copied verbatim, half with `edit_rate` of their words
  replaced (a scraped, lightly edited copy); clean items get no copy;
- every item also gets a decoy: a paraphrase-like near match (`decoy_rate` of its words replaced,
  adjacent words swapped) that is not a copy;
- `n_targets` held-out documents of one source module are the selection targets (not in the corpus);
- the built-in model is trained on that corpus and the run is indexed with the product's preset.

`stride bench contamination` runs the contamination audit and reports, per replication count, the
recall of leaked items and copies, and the fraction of decoys and clean items flagged, for
overlap-only, STRIDE-only and combined flags (at the audit's default thresholds, and at the
threshold of each single signal that keeps decoy flags <= 5%).
`stride bench selection` selects `budget` documents for the targets by STRIDE (two orderings),
BM25, TF-IDF similarity and at random, trains a fresh small model on each selection for a fixed number of
steps (several seeds) and reports the targets' loss with a 95% confidence interval.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import StrideError

logger = logging.getLogger(__name__)

CORPUS = "auditbench"
RUN = "auditbench"


@dataclass
class AuditBenchConfig:
    preset: str = "default"  # model and index preset ("ci" for a quick check)
    counts: tuple = (1, 2, 4, 8)
    items_per_count: int = 8
    n_clean: int = 8
    item_words: int = 48
    edit_rate: float = 0.1
    decoy_rate: float = 0.35
    n_targets: int = 30
    seed: int = 0
    max_docs: int | None = None  # use only the first pydocs documents (CI-size runs)

    def __post_init__(self):
        if self.preset not in ("ci", "default"):
            raise StrideError("preset must be ci or default")
        if self.items_per_count < 2 or self.n_clean < 1 or self.item_words < 16 or self.n_targets < 2:
            raise StrideError("items_per_count >= 2, n_clean >= 1, item_words >= 16, n_targets >= 2")
        self.counts = tuple(int(c) for c in self.counts)


def _perturb(text_words: list[str], rate: float, vocab: list[str], rng, swap: bool = False) -> list[str]:
    w = list(text_words)
    n = max(1, int(round(rate * len(w))))
    for i in rng.choice(len(w), n, replace=False):
        w[i] = vocab[rng.integers(len(vocab))]
    if swap:
        for i in rng.choice(len(w) - 1, max(1, len(w) // 12), replace=False):
            w[i], w[i + 1] = w[i + 1], w[i]
    return w


def build_bench_corpus(docs: list[dict], cfg: AuditBenchConfig) -> tuple[list[dict], pd.DataFrame, pd.DataFrame]:
    """(corpus records, items, targets). Records carry a `role` metadata column
    (original | copy | host | decoy) and the `planted_item` they belong to."""
    rng = np.random.default_rng(cfg.seed)
    n_words = np.array([len(d["text"].split()) for d in docs])
    sources = pd.Series([d["source"] for d in docs])
    # selection targets: held-out documents of the largest source module
    big = sources.value_counts().index[0]
    pool = np.flatnonzero((sources == big).to_numpy() & (n_words >= 20))
    targets = rng.choice(pool, min(cfg.n_targets, len(pool) // 3), replace=False)
    # benchmark items: held-out documents with enough words, from any other module
    n_items = cfg.items_per_count * len(cfg.counts) + cfg.n_clean
    cand = rng.permutation(np.setdiff1d(np.flatnonzero(n_words >= cfg.item_words + 8), targets))
    # an item must be new to the corpus: pydocs repeats some docstrings (inherited methods), so skip
    # candidates whose opening words already occur elsewhere (8-gram containment >= 0.2)
    from ..audits.contamination import NgramIndex

    openings = [" ".join(docs[i]["text"].split()[: cfg.item_words]) for i in cand[: 4 * n_items]]
    index = NgramIndex(openings, 8)
    seen = np.zeros(len(openings))
    for j, d in enumerate(docs):
        for q, (c, _, _) in index.scan(d["text"]).items():
            if cand[q] != j:
                seen[q] = max(seen[q], c)
    fresh = [int(cand[q]) for q in range(len(openings)) if seen[q] < 0.2]
    if len(fresh) < n_items:
        raise StrideError(f"only {len(fresh)} held-out documents are new enough to be benchmark items; lower the item counts")
    item_src = np.array(fresh[:n_items])
    held = set(targets.tolist()) | set(item_src.tolist())
    vocab = sorted({w for d in docs[:400] for w in d["text"].split() if re.fullmatch(r"\w{3,12}", w)})
    items = []
    records = [dict(d, role="original", planted_item=None) for i, d in enumerate(docs) if i not in held]
    hosts = rng.permutation(len(records))
    host_pos = 0
    kinds = [(c, "verbatim" if j % 2 == 0 else "edited") for c in cfg.counts for j in range(cfg.items_per_count)]
    kinds += [(0, "clean")] * cfg.n_clean
    for q, (src, (count, kind)) in enumerate(zip(item_src, kinds)):
        words = docs[src]["text"].split()[: cfg.item_words]
        item_id = f"item{q:03d}"
        text = " ".join(words)
        items.append({"item_id": item_id, "text": text, "copies": count, "kind": kind})
        for c in range(count):
            copy = text if kind == "verbatim" else " ".join(_perturb(words, cfg.edit_rate, vocab, rng))
            if c % 2 == 0:  # a document of its own
                records.append({"text": copy, "source": "planted", "object": item_id, "kind": "copy", "role": "copy",
                                "planted_item": item_id})
            else:  # embedded in the middle of a host document
                h = records[hosts[host_pos]]
                host_pos += 1
                while h["role"] != "original":
                    h = records[hosts[host_pos]]
                    host_pos += 1
                paras = h["text"].split("\n\n")
                cut = max(1, len(paras) // 2)
                h.update(text="\n\n".join(paras[:cut] + [copy] + paras[cut:]), role="host", planted_item=item_id)
        decoy = " ".join(_perturb(words, cfg.decoy_rate, vocab, rng, swap=True))
        records.append({"text": decoy, "source": "planted", "object": item_id, "kind": "decoy", "role": "decoy",
                        "planted_item": item_id})
    order = rng.permutation(len(records))  # planted documents spread over the corpus
    records = [records[i] for i in order]
    tgt = pd.DataFrame({"item_id": [f"target{i:03d}" for i in range(len(targets))],
                        "text": [docs[i]["text"] for i in targets], "source": big})
    return records, pd.DataFrame(items), tgt


def prepare(out_dir, cfg: AuditBenchConfig, device: str = "cpu", progress: bool = True) -> dict:
    """Build (or reuse) the audit-bench workspace in out_dir/ws: corpus, model, indexed run."""
    from ..store.corpus import corpus_info, import_records, list_corpora
    from ..runs.config import make_config
    from ..runs.indexing import index
    from ..store.pydocs import iter_pydocs
    from ..store.tiny_model import TinyModelArgs, train_tiny
    from ..store.workspace import Workspace

    out = Path(out_dir)
    ws = Workspace(out / "ws").ensure()
    meta_path = out / "prepare.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta["config"] != json.loads(json.dumps(asdict(cfg))):
            raise StrideError(f"{out} was prepared with other settings; use another --out")
        if (ws.run_dir(RUN) / "operators.safetensors").exists():
            return meta
    t0 = time.time()
    if not any(c["name"] == CORPUS for c in list_corpora(ws)):
        records, items, targets = build_bench_corpus(list(iter_pydocs())[: cfg.max_docs], cfg)
        items.to_json(out / "benchmark.jsonl", orient="records", lines=True)
        targets.to_json(out / "targets.jsonl", orient="records", lines=True)

        def batches():
            for i in range(0, len(records), 4096):
                yield records[i:i + 4096]

        from ..store.corpus import ImportOptions

        import_records(ws, CORPUS, ["source", "object", "kind", "role", "planted_item"], batches(),
                       ImportOptions(text_field="text", shard_size=1000), "audit-bench", CORPUS)
    model_dir = ws.models_dir / f"auditbench-{cfg.preset}"
    t1 = time.time()
    if not (model_dir / "stride_training.json").exists():
        targs = TinyModelArgs.preset(cfg.preset)
        targs.val_fraction = 0.01  # nearly every planted copy is trained on
        train_tiny(ws, CORPUS, model_dir, targs, progress=progress, device=device)
    t2 = time.time()
    index(ws, RUN, make_config(CORPUS, str(model_dir), cfg.preset), device=device, progress=progress)
    training = json.loads((model_dir / "stride_training.json").read_text())
    meta = {"config": json.loads(json.dumps(asdict(cfg))), "n_docs": corpus_info(ws, CORPUS)["n_docs"],
            "model_val_loss": training["val_loss"], "model_unigram_loss": training["unigram_val_loss"],
            "val_doc_ids": training["val_doc_ids"], "train_seconds": t2 - t1, "index_seconds": time.time() - t2,
            "prepare_seconds": time.time() - t0, "device": device, "model_dir": str(model_dir)}
    meta_path.write_text(json.dumps(meta, indent=1))
    return meta


# ---------------------------------------------------------------------------------------- contamination


def contamination_metrics(pairs: pd.DataFrame, items: pd.DataFrame, docs: pd.DataFrame, flag: pd.Series) -> list[dict]:
    """Per replication count: item recall (an item counts when one of its copies is flagged for it),
    copy recall; plus decoys flagged and clean items flagged. `flag` is a boolean Series over `pairs`."""
    p = pairs  # carries the corpus metadata columns role and planted_item
    true_copy = p["role"].isin(["copy", "host"]) & (p["planted_item"] == p["item_id"])
    decoy = (p["role"] == "decoy") & (p["planted_item"] == p["item_id"])
    rows = []
    n_copies_total = docs[docs["role"].isin(["copy", "host"])].groupby("planted_item").size()
    for count in sorted(items["copies"].unique()):
        its = items[items["copies"] == count]["item_id"]
        sel = p["item_id"].isin(its)
        if count == 0:
            flagged_items = p[sel & flag].groupby("item_id").size()
            rows.append({"copies": 0, "n_items": len(its), "item_recall": None, "copy_recall": None,
                         "clean_items_flagged": len(flagged_items) / len(its)})
            continue
        hit = p[sel & flag & true_copy]
        rows.append({"copies": int(count), "n_items": len(its), "item_recall": hit["item_id"].nunique() / len(its),
                     "copy_recall": len(hit[["item_id", "doc_id"]].drop_duplicates()) / int(n_copies_total.reindex(its).fillna(0).sum()),
                     "clean_items_flagged": None})
    n_decoys = int((docs["role"] == "decoy").sum())
    rows.append({"copies": "decoys", "n_items": n_decoys, "decoys_flagged": int((flag & decoy).sum()) / max(1, n_decoys)})
    return rows


def _best_threshold(score: pd.Series, decoy: pd.Series, max_rate: float, n_decoys: int, floor: float) -> float:
    """Smallest threshold on `score` (not below `floor`, the level under which the audit reports no
    pair, so decoys missing from the report score below it) that flags at most max_rate of the decoys."""
    d = np.sort(score[decoy].to_numpy())[::-1]
    allowed = int(np.floor(max_rate * n_decoys))
    if len(d) <= allowed:
        return floor
    return max(floor, float(d[allowed]) + 1e-9)


def run_contamination_bench(out_dir, cfg: AuditBenchConfig | None = None, device: str = "auto", progress: bool = True) -> dict:
    from ..audits.contamination import ContaminationArgs, audit_contamination
    from ..store.corpus import load_documents
    from ..store.models import resolve_device
    from ..store.workspace import Workspace

    cfg = cfg or AuditBenchConfig()
    dev = resolve_device(device)
    out = Path(out_dir)
    meta = prepare(out, cfg, dev, progress)
    ws = Workspace(out / "ws")
    items = pd.read_json(out / "benchmark.jsonl", lines=True)
    t0 = time.time()
    cargs = ContaminationArgs(device=dev)
    pairs, summary = audit_contamination(ws, RUN, out / "benchmark.jsonl", cargs, progress=progress)
    audit_s = time.time() - t0
    docs = load_documents(ws, CORPUS, ["doc_id", "role", "planted_item"])
    decoy = (pairs["role"] == "decoy") & (pairs["planted_item"] == pairs["item_id"])
    n_decoys = int((docs["role"] == "decoy").sum())
    z_thr = cargs.z_for(meta["n_docs"])
    t_ov = _best_threshold(pairs["overlap_score"], decoy, 0.05, n_decoys, cargs.min_overlap)
    t_z = _best_threshold(pairs["influence_z"], decoy, 0.05, n_decoys, z_thr / 2)
    flags = {
        "overlap-only (default 0.5)": pairs["flag_overlap"],
        "STRIDE-only (default z)": pairs["influence_z"] >= z_thr,
        "combined (default)": pairs["leaked"],
        f"overlap-only (tuned {t_ov:.2f})": pairs["overlap_score"] >= t_ov,
        f"STRIDE-only (tuned z {t_z:.2f})": pairs["influence_z"] >= t_z,
    }
    rows = []
    for name, flag in flags.items():
        for r in contamination_metrics(pairs, items, docs, flag.astype(bool)):
            rows.append({"method": name, **r})
    # the memorisation signal itself: loss of leaked vs clean items under the audited model
    loss = summary.set_index("item_id")["item_loss"]
    by_count = {int(c): float(loss[items[items["copies"] == c]["item_id"]].mean()) for c in sorted(items["copies"].unique())}
    result = {"setting": "contamination", "config": asdict(cfg), "prepare": {k: v for k, v in meta.items() if k != "val_doc_ids"},
              "z_threshold": z_thr, "audit_seconds": audit_s, "item_loss_by_copies": by_count, "rows": rows,
              "device": dev, "date": time.strftime("%Y-%m-%d")}
    (out / "contamination_results.json").write_text(json.dumps(result, indent=1, default=str))
    _print_contamination(result)
    return result


def _print_contamination(result: dict):
    df = pd.DataFrame(result["rows"])
    print(f"contamination bench: {result['prepare']['n_docs']} documents, audit {result['audit_seconds']:.0f}s, "
          f"z threshold {result['z_threshold']:.2f}; item loss by copies {result['item_loss_by_copies']}")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


# ---------------------------------------------------------------------------------------- selection


SELECTION_METHODS = ("stride", "stride-matched", "bm25", "tfidf", "random")  # the default table; also "stride-lambda-min"


@dataclass
class SelectionBenchConfig:
    budget: int = 300
    seeds: int = 3
    steps: int = 300  # optimizer steps of every fresh model, whatever its selection's size
    methods: list = field(default_factory=lambda: list(SELECTION_METHODS))

    def __post_init__(self):
        if self.budget < 10 or self.seeds < 1 or self.steps < 10:
            raise StrideError("budget >= 10, seeds >= 1, steps >= 10")
        unknown = set(self.methods) - set(SELECTION_METHODS) - {"stride-lambda-min"}
        if unknown:
            raise StrideError(f"unknown selection method(s) {sorted(unknown)}")


def _tfidf_select(ws, targets: list[str], budget: int) -> list[int]:
    from sklearn.feature_extraction.text import TfidfVectorizer

    from ..store.corpus import load_documents

    docs = load_documents(ws, CORPUS, ["doc_id", "text"])
    vec = TfidfVectorizer(sublinear_tf=True, token_pattern=r"(?u)\b\w+\b").fit(docs["text"])
    s = np.asarray((vec.transform(docs["text"]) @ vec.transform(targets).T).mean(axis=1)).ravel()
    return docs["doc_id"].to_numpy()[np.argsort(-s, kind="stable")[:budget]].tolist()


def _bm25_select(ws, targets: list[str], budget: int, k1: float = 1.5, b: float = 0.75) -> list[int]:
    """Okapi BM25 of every document against each target (the target's words as the query), averaged
    over targets after dividing by each target's best score."""
    from sklearn.feature_extraction.text import CountVectorizer

    from ..store.corpus import load_documents

    docs = load_documents(ws, CORPUS, ["doc_id", "text"])
    vec = CountVectorizer(token_pattern=r"(?u)\b\w+\b").fit(docs["text"])
    tf = vec.transform(docs["text"]).tocsc().astype(np.float64)  # (N, V)
    n = tf.shape[0]
    dl = np.asarray(tf.sum(axis=1)).ravel()
    df = np.diff(tf.indptr)
    idf = np.log(1 + (n - df + 0.5) / (df + 0.5))
    tf = tf.tocoo()
    denom = tf.data + k1 * (1 - b + b * dl[tf.row] / dl.mean())
    from scipy.sparse import csr_matrix

    weights = csr_matrix((tf.data * (k1 + 1) / denom * idf[tf.col], (tf.row, tf.col)), shape=tf.shape)
    q = (vec.transform(targets) > 0).astype(np.float64)  # (Q, V) query terms
    scores = np.asarray((weights @ q.T).todense())  # (N, Q)
    scores = scores / np.maximum(scores.max(axis=0, keepdims=True), 1e-12)
    s = scores.mean(axis=1)
    return docs["doc_id"].to_numpy()[np.argsort(-s, kind="stable")[:budget]].tolist()


def _train_and_eval(ws, model_dir: Path, doc_ids: list[int], targets: list[str], steps: int, seed: int, device: str) -> float:
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from ..store.corpus import load_documents
    from ..store.tiny_model import TinyModelArgs, build_config, eval_loss, pack, train_lm

    tok = AutoTokenizer.from_pretrained(model_dir)
    args = TinyModelArgs.preset("ci")
    args.seed = seed
    texts = load_documents(ws, CORPUS, ["doc_id", "text"], doc_ids=doc_ids)["text"].tolist()
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    blocks = pack(ids, tok.eos_token_id, args.block_size)
    args.epochs = steps * args.batch_size / len(blocks)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(build_config(args, len(tok), tok.eos_token_id))
    train_lm(model, blocks, args, progress=False, device=device)
    tids = tok(targets, add_special_tokens=False)["input_ids"]
    return eval_loss(model, tids, tok.eos_token_id, args.block_size, device)


def run_selection_bench(out_dir, cfg: AuditBenchConfig | None = None, scfg: SelectionBenchConfig | None = None,
                        device: str = "auto", progress: bool = True) -> dict:
    from scipy import stats

    from ..store.corpus import load_documents
    from ..store.models import resolve_device
    from ..audits.selection import SelectionArgs, audit_select
    from ..store.workspace import Workspace

    cfg, scfg = cfg or AuditBenchConfig(), scfg or SelectionBenchConfig()
    dev = resolve_device(device)
    out = Path(out_dir)
    meta = prepare(out, cfg, dev, progress)
    ws = Workspace(out / "ws")
    targets = pd.read_json(out / "targets.jsonl", lines=True)["text"].tolist()
    selections, seconds = {}, {}
    for method in scfg.methods:
        t0 = time.time()
        if method.startswith("stride"):
            df = audit_select(ws, RUN, out / "targets.jsonl",
                              SelectionArgs(budget=scfg.budget, score="matched" if method == "stride-matched" else "lasso",
                                            lambda_rule="min" if method == "stride-lambda-min" else "1se", device=dev),
                              progress=progress)
            selections[method] = df[df["decision"] == "keep"]["doc_id"].astype(int).tolist()
        elif method == "tfidf":
            selections[method] = _tfidf_select(ws, targets, scfg.budget)
        elif method == "bm25":
            selections[method] = _bm25_select(ws, targets, scfg.budget)
        else:
            all_ids = load_documents(ws, CORPUS, ["doc_id"])["doc_id"].to_numpy()
            selections[method] = np.random.default_rng(1234).choice(all_ids, scfg.budget, replace=False).tolist()
        seconds[method] = time.time() - t0
    rows = []
    for method, ids in selections.items():
        losses = [_train_and_eval(ws, Path(meta["model_dir"]), ids, targets, scfg.steps, s, dev) for s in range(scfg.seeds)]
        m = float(np.mean(losses))
        half = float(stats.t.ppf(0.975, len(losses) - 1) * np.std(losses, ddof=1) / np.sqrt(len(losses))) if len(losses) > 1 else float("nan")
        rows.append({"method": method, "target_loss": m, "ci_low": m - half, "ci_high": m + half, "losses": losses,
                     "select_seconds": seconds[method]})
        logger.info("selection %s: target loss %.3f ± %.3f", method, m, half)
    docs = load_documents(ws, CORPUS, ["doc_id", "source"])
    src = docs.set_index("doc_id")["source"]
    target_source = pd.read_json(out / "targets.jsonl", lines=True)["source"].iloc[0]
    for r in rows:
        r["same_source_fraction"] = float((src.reindex(selections[r["method"]]) == target_source).mean())
    result = {"setting": "selection", "config": asdict(cfg), "selection_config": asdict(scfg), "target_source": target_source,
              "n_targets": len(targets), "prepare": {k: v for k, v in meta.items() if k != "val_doc_ids"}, "rows": rows,
              "device": dev, "date": time.strftime("%Y-%m-%d")}
    (out / "selection_results.json").write_text(json.dumps(result, indent=1))
    print(f"selection bench: {len(targets)} targets from {target_source!r}, budget {scfg.budget}, {scfg.seeds} seeds, "
          f"{scfg.steps} steps per model")
    with pd.option_context("display.width", 200):
        print(pd.DataFrame(rows).drop(columns=["losses"]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return result


# ---------------------------------------------------------------------------------------- CLI


def _cmd_contamination(args):
    cfg = AuditBenchConfig(preset=args.preset, seed=args.seed)
    run_contamination_bench(args.out, cfg, device=args.device, progress=not args.no_progress)


def _cmd_selection(args):
    cfg = AuditBenchConfig(preset=args.preset, seed=args.seed)
    scfg = SelectionBenchConfig(budget=args.budget, seeds=args.seeds, steps=args.steps,
                                methods=[m.strip() for m in args.methods.split(",") if m.strip()])
    run_selection_bench(args.out, cfg, scfg, device=args.device, progress=not args.no_progress)


def register(bench_subparsers, common_parent):
    for name, fn, help_ in (("contamination", _cmd_contamination, "recall of planted benchmark copies vs decoys (overlap, STRIDE, combined)"),
                            ("selection", _cmd_selection, "target loss of models trained on STRIDE / TF-IDF / random selections")):
        x = bench_subparsers.add_parser(name, help=help_, parents=[common_parent])
        x.add_argument("--out", required=True, help="folder: the prepared workspace is reused by both audit benches")
        x.add_argument("--preset", choices=["ci", "default"], default="default", help="model and index preset (default: default)")
        x.add_argument("--seed", type=int, default=0)
        x.add_argument("--device", default="auto")
        if name == "selection":
            x.add_argument("--budget", type=int, default=300)
            x.add_argument("--seeds", type=int, default=3)
            x.add_argument("--steps", type=int, default=300)
            x.add_argument("--methods", default=",".join(SELECTION_METHODS),
                           help="comma-separated: stride, stride-matched, stride-lambda-min, bm25, tfidf, random")
        x.set_defaults(func=fn)
