"""`stride bench tracing`: can a run trace a prompt back to the document it was copied from?

A seeded sample of the run's corpus documents is turned into prompts: each prompt is a verbatim prefix
of one document (`--min-chars`..`--max-chars` characters, cut at a word boundary). The prompts are
attributed through the product path (`pipeline.attribute`, the run's model continues each prompt), and
for each method we report:
  hit@k          the share of prompts whose source document is among the top k helpful documents;
  max share@k    the largest share of prompts any single document is in the top k of (a hub detector);
  median rank    of the source document (N + 1 when it is not ranked).
Methods: STRIDE with the product's defaults (query-specific ranking, loss on prompt + continuation:
`stride`), STRIDE on the raw measurements (`stride-raw`), STRIDE with the loss on the continuation only
(`stride-continuation`), the labelled hybrid (`stride+lexical`: z(STRIDE) + z(TF-IDF), the product's
`--method stride+lexical`) and TF-IDF cosine between prompt + continuation and every document (`tfidf`), on the same
prompts and continuations. Results: DIR/results.json and a printed table.

This is a memorisation test: a prompt copied from a training document is where the model's own
training data should explain its continuation best. It says nothing about topical attribution.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from collections import Counter
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def prefix_prompts(docs, n: int, seed: int, min_chars: int = 60, max_chars: int = 120) -> list[dict]:
    """n seeded documents (doc_id, text) with at least max_chars + 40 characters -> prompts: a prefix of
    min_chars..max_chars characters ending at a word boundary (query_id = "src<doc_id>")."""
    from ..errors import StrideError

    texts = [(int(d), " ".join(str(t).split())) for d, t in zip(docs["doc_id"], docs["text"])]
    pool = [(d, t) for d, t in texts if len(t) >= max_chars + 40]
    if len(pool) < n:
        raise StrideError(f"only {len(pool)} documents have >= {max_chars + 40} characters: ask for fewer --prompts")
    rng = np.random.default_rng(seed)
    out = []
    for i in np.sort(rng.choice(len(pool), n, replace=False)):
        doc_id, text = pool[int(i)]
        cut = int(rng.integers(min_chars, max_chars + 1))
        space = text.rfind(" ", min_chars, cut + 1)
        out.append({"query_id": f"src{doc_id}", "prompt": text[: space if space > 0 else cut], "source_doc": doc_id})
    return out


def tracing_metrics(ranked: dict[str, list[int]], sources: dict[str, int], k: int, n_docs: int) -> dict:
    """ranked: query -> doc ids, best first; sources: query -> source doc id."""
    hits, ranks, tops = [], [], Counter()
    for q, src in sources.items():
        docs = ranked.get(q, [])
        hits.append(src in docs[:k])
        ranks.append(docs.index(src) + 1 if src in docs else n_docs + 1)
        tops.update(set(docs[:k]))
    Q = len(sources)
    top_doc, top_n = tops.most_common(1)[0] if tops else (None, 0)
    return {f"hit@{k}": float(np.mean(hits)), f"max_share@{k}": top_n / Q, "hub_doc": top_doc,
            "median_rank": float(np.median(ranks)), "n_prompts": Q}


def _tfidf_rankings(docs, gens: list[dict], k: int) -> dict[str, list[int]]:
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(sublinear_tf=True)
    X = vec.fit_transform(docs["text"].astype(str).tolist())
    S = np.asarray((vec.transform([g["prompt"] + " " + g["continuation"] for g in gens]) @ X.T).todense())  # (Q, N)
    ids = docs["doc_id"].to_numpy()
    return {g["query_id"]: [int(ids[j]) for j in np.argsort(-S[i], kind="stable")[:k]] for i, g in enumerate(gens)}


def run_tracing_bench(ws, run: str, out: str | Path, n_prompts: int = 30, k: int = 10, seed: int = 0,
                      min_chars: int = 60, max_chars: int = 120, device: str = "auto", progress: bool = True,
                      repetition_penalty: float = 1.3, no_repeat_ngram_size: int = 3, contrast: float | None = None) -> dict:
    from ..method.arguments import AttributeArgs
    from ..store.corpus import load_documents
    from ..errors import StrideError
    from ..runs.attribution import attribute
    from ..runs.indexing import load_run

    contrast = AttributeArgs.contrast if contrast is None else contrast
    if n_prompts < 1 or k < 1 or not (1 <= min_chars <= max_chars):
        raise StrideError("--prompts and --k must be >= 1, and 1 <= --min-chars <= --max-chars")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _, config = load_run(ws, run)
    docs = load_documents(ws, config.corpus, ["doc_id", "text"], shards=config.shards)
    prompts = prefix_prompts(docs, n_prompts, seed, min_chars, max_chars)
    sources = {p["query_id"]: p["source_doc"] for p in prompts}
    (out / "prompts.jsonl").write_text("".join(json.dumps({"query_id": p["query_id"], "prompt": p["prompt"]}) + "\n" for p in prompts))
    results, ranked_by = {}, {}
    gens = None
    # the product's default (query-specific ranking, loss on prompt + continuation), raw measurements, and the
    # loss on the continuation only (the default before 2026-12-03, which traced nothing)
    for name, ranking, loss_on, method in (("stride", "specific", "all", "stride"), ("stride-raw", "raw", "all", "stride"),
                                           ("stride-continuation", "specific", "continuation", "stride"),
                                           ("stride+lexical", "specific", "all", "stride+lexical")):
        t0 = time.perf_counter()
        df = attribute(ws, run, [{"query_id": p["query_id"], "prompt": p["prompt"]} for p in prompts],
                       AttributeArgs(top_k=max(k, 50), device=device, ranking=ranking, loss_on=loss_on, repetition_penalty=repetition_penalty,
                                     no_repeat_ngram_size=no_repeat_ngram_size, contrast=contrast, method=method), progress=progress)
        secs = time.perf_counter() - t0
        helpful = df[df["direction"] == "helpful"].sort_values(["query_id", "rank"])
        ranked_by[name] = {q: g["doc_id"].astype(int).tolist() for q, g in helpful.groupby("query_id")}
        results[name] = {**tracing_metrics(ranked_by[name], sources, k, len(docs)), "seconds": round(secs, 1)}
        if gens is None:
            first = df.drop_duplicates("query_id").set_index("query_id")
            gens = [{"query_id": p["query_id"], "prompt": p["prompt"],
                     "continuation": str(first["continuation"].get(p["query_id"], "")) if p["query_id"] in first.index else ""}
                    for p in prompts]
    ranked_by["tfidf"] = _tfidf_rankings(docs, gens, max(k, 50))
    results["tfidf"] = tracing_metrics(ranked_by["tfidf"], sources, k, len(docs))
    summary = {"run": run, "corpus": config.corpus, "n_docs": len(docs), "k": k, "seed": seed, "methods": results,
               "generation": {"repetition_penalty": repetition_penalty, "no_repeat_ngram_size": no_repeat_ngram_size, "contrast": contrast},
               "examples": [{"prompt": g["prompt"], "continuation": g["continuation"],
                             "stride_top3": ranked_by["stride"].get(g["query_id"], [])[:3], "source": sources[g["query_id"]]}
                            for g in gens[:5]],
               "machine": platform.platform(), "date": time.strftime("%Y-%m-%d %H:%M")}
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    print(f"tracing bench: run {run!r}, corpus {config.corpus!r} ({len(docs)} documents), {n_prompts} prefix prompts")
    print(f"{'method':20s} {'hit@' + str(k):>8s} {'max share@' + str(k):>14s} {'median rank':>12s}  hub")
    for name, r in results.items():
        print(f"{name:20s} {r[f'hit@{k}']:8.2f} {r[f'max_share@{k}']:14.2f} {r['median_rank']:12.1f}  {r['hub_doc']}")
    return summary


def register(bench_sub, common):
    x = bench_sub.add_parser("tracing", help="prefix prompts of corpus documents: is the source document ranked top?",
                             parents=[common])
    x.add_argument("--run", required=True, help="an indexed run")
    x.add_argument("--out", required=True, help="output folder (results.json, prompts.jsonl)")
    x.add_argument("--prompts", type=int, default=30, help="number of prefix prompts")
    x.add_argument("--k", type=int, default=10, help="top-k for hit@k and the hub share")
    x.add_argument("--seed", type=int, default=0)
    x.add_argument("--min-chars", dest="min_chars", type=int, default=60)
    x.add_argument("--max-chars", dest="max_chars", type=int, default=120)
    x.add_argument("--repetition-penalty", dest="repetition_penalty", type=float, default=1.3)
    x.add_argument("--no-repeat-ngram", dest="no_repeat_ngram_size", type=int, default=3)
    x.add_argument("--contrast", type=float, default=None, help="context-aware decoding strength (default: the product's)")
    x.add_argument("--device", default="auto")
    x.set_defaults(func=_cmd)


def _cmd(a):
    from ..store.workspace import workspace_at

    run_tracing_bench(workspace_at(a.workspace), a.run, a.out, a.prompts, a.k, a.seed, a.min_chars, a.max_chars, a.device, not a.no_progress,
                      a.repetition_penalty, a.no_repeat_ngram_size, a.contrast)

