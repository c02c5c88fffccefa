"""STRIDE on several processes (GPUs, or CPU with gloo) through torch.distributed, launched by torchrun.

    torchrun --nproc_per_node 4 -m stride_core.cli.torchrun index --corpus C --model DIR --run R [index options]
    torchrun --nproc_per_node 4 -m stride_core.cli.torchrun attribute --run R --prompts FILE [attribute options]
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-endpoint HOST:PORT -m stride_core.cli.torchrun run ...

(the command line is stride_core.cli.torchrun; this module is the engine it drives).

The run folder is the same as a one-process `stride index` / `stride attribute` writes (either can resume
or query what the other made); every rank needs the workspace at the same path (one machine, or a shared
filesystem across nodes). How the work is split:

- tokenization: chunks of documents round-robin over ranks, each into its own part file; rank 0 joins them;
- activation caching: each rank forwards a contiguous block of documents (balanced by tokens) and writes
  its disjoint row range of the shared memmaps (and its documents' bytes of the done mask);
- operator training: data-parallel. Every rank draws the same global sample (same seeded generator),
  computes the loss terms of its share of the subsets / token rows divided by the global sample size,
  gradients (and logged loss terms) are summed with one all_reduce per step, and the identical Adam step
  runs everywhere, so the update equals the one-process one up to float summation order;
- measurement and recovery: queries are split into contiguous blocks; the Lasso lambda ratio is chosen
  from held-out errors summed over all ranks (as one process sums them over all queries), recovery runs in
  query batches of `query_batch` and keeps only the top-k documents per query, and rank 0 merges the rows
  into runs/<run>/attributions.parquet, --out and the workspace DuckDB.

Without torchrun's environment (RANK / WORLD_SIZE) everything runs as one process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path

import numpy as np

from ..errors import InputError, StrideError
from ..method.generic import remove_generic
from .process_group import Comm, DataParallel, DistArgs, token_blocks

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ process group


# ------------------------------------------------------------------------------------------ index


def index(ws, run: str, config, comm: Comm, device: str, overwrite: bool = False, progress: bool = True):
    """`pipeline.index` on every rank of `comm` (all ranks call it with the same arguments).
    Returns the run folder. `device` is this rank's device (see `setup`)."""
    from ..store.locks import run_lock

    if config.subsets.designs > 1:
        raise StrideError("--designs > 1 is not supported under torchrun yet: index with `stride index` (one process)")
    with run_lock(ws.run_dir(run)) if comm.is_main else contextlib.nullcontext():  # rank 0 holds the run for all ranks
        return _index(ws, run, config, comm, device, overwrite, progress)


def _index(ws, run: str, config, comm: Comm, device: str, overwrite: bool, progress: bool):
    from ..method.activations import FeatureCache, fill_cache, finish_cache, prepare_cache
    from ..method.estimator import StrideEstimator
    from ..method.operators import train_operators
    from .config import check_documents
    from .indexing import begin_run, check_tokens, ensure_design, load_task
    from .run_files import atomic_save
    from .progress import Reporter
    from ..store.tokens import TokenizeArgs, TokenStore, begin_tokens, finish_tokens, tokenize_part

    main = comm.is_main
    show = progress and main
    begun = comm.agree(lambda: begin_run(ws, run, config, device, overwrite) if main else None)
    rdir, info = comm.broadcast_object(begun)
    rep = Reporter(rdir if main else None, run)
    try:
        # 1. tokens: chunks round-robin over ranks, joined by rank 0 -------------------------
        targs = TokenizeArgs(max_tokens=config.cache.max_tokens)
        troot = rdir / "tokens"

        def begin():
            meta, doc_ids = begin_tokens(ws, config.corpus, config.shards, troot, targs)
            check_documents(config, len(doc_ids))  # before loading the model: a wrong K fails at once
            return bool(meta.get("finished"))

        finished = comm.broadcast_object(comm.agree(lambda: begin() if main else None))
        rep.stage("load model", f"{config.model} on {comm.world} processes")
        task = comm.agree(load_task, config, device)
        rep.stage("cache activations", f"corpus {config.corpus} ({info['n_docs']} documents, {comm.world} processes)")
        if not finished:
            comm.agree(tokenize_part, ws, config.corpus, config.shards, troot, task.tokenizer, targs,
                       comm.rank, comm.world, show)
            comm.agree(lambda: check_tokens(finish_tokens(troot)) if main else None)
        tokens = comm.agree(TokenStore.open, troot)

        # 2. activation cache: contiguous token-balanced blocks, disjoint memmap rows ----------
        croot = rdir / "cache"
        t0 = time.time()
        done = comm.agree(lambda: prepare_cache(croot, task, tokens.items(), tokens.lengths, tokens.doc_ids,
                                                config.cache.dtype) if main else None)
        if not comm.broadcast_object(done):
            a, b = token_blocks(tokens.offsets, comm.world)[comm.rank]
            comm.agree(fill_cache, croot, task, tokens.items(), np.arange(a, b), config.cache.batch_size, show,
                       (lambda f: rep.update(f)) if main else None)
            comm.agree(lambda: finish_cache(croot) if main else None)
        cache = comm.agree(FeatureCache.open, croot)
        logger.info("activation cache: %d documents, %d tokens in %.1fs", cache.n_docs, cache.n_tokens, time.time() - t0)

        # 3. subsets (rank 0 draws and saves, the others load) --------------------------------
        comm.agree(lambda: ensure_design(rdir, config, cache.doc_ids) if main else None)
        design = comm.agree(ensure_design, rdir, config, cache.doc_ids)

        # 4. operators: data-parallel steps; rank 0 computes the reference and saves -----------
        op_path = rdir / "operators.safetensors"
        if not comm.broadcast_object(op_path.exists()):
            rep.stage("train operators", f"K={design.K} subsets, R={config.operators.R}, {config.operators.steps} steps, "
                                         f"{comm.world} processes")
            est = StrideEstimator(task.head, config.subsets, config.operators, device=device, progress=show)
            est.design_ = design
            est.ops_, est.trace_ = comm.agree(train_operators, cache, design, task.head, config.operators, device, show,
                                              (lambda f, **m: rep.update(f, **m)) if main else None,
                                              DataParallel(comm) if comm.world > 1 else None)

            def save():
                est.reference_ = est.reference_y(cache)
                atomic_save(lambda p: p.write_text(json.dumps(est.trace_)), rdir / "operators_trace.json")
                atomic_save(est.save, op_path)  # last: its presence marks the index finished

            comm.agree(lambda: save() if main else None)
        rep.stage("indexed", f"index complete ({comm.world} processes)")
        rep.finish("done")
    except KeyboardInterrupt:
        rep.finish("cancelled", "interrupted")
        raise
    except BaseException as exc:
        rep.finish("failed", str(exc))
        raise
    return rdir


# -------------------------------------------------------------------------------------- attribute


def top_rows(w: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the k most helpful (largest positive, ties: lower index first) and k most harmful
    (most negative, ties: higher index first) entries of w (N,), without sorting all N."""

    def best(idx, key):
        if len(idx) > k:
            idx = idx[np.argpartition(key[idx], k - 1)[:k]]
        return idx

    pos = best(np.flatnonzero(w > 0), -w)
    neg = best(np.flatnonzero(w < 0), w)
    return pos[np.lexsort((pos, -w[pos]))], neg[np.lexsort((-neg, w[neg]))]


def recover_top(est, y: np.ndarray, top_k: int, query_batch: int, ratio: float | None) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Lasso per query batch (peak memory ~ query_batch x N floats) keeping only the top-k per query:
    [(helpful idx, harmful idx, w at those idx)] per row of y."""
    from ..method.recovery import LassoRecovery

    out = []
    for s in range(0, len(y), query_batch):
        rec = LassoRecovery(alpha=est.alpha, alpha_ratio=ratio if ratio is not None else est.alpha_ratio, rule=est.lambda_rule,
                            positive=est.positive, device=est.device).fit(est.design_, y[s:s + query_batch])
        W = rec.influence_
        for wq in W:
            hp, hm = top_rows(wq, top_k)
            out.append((hp, hm, wq))
        del rec, W
    return [(hp, hm, wq[np.concatenate([hp, hm])]) for hp, hm, wq in out]


def choose_ratio(est, y: np.ndarray, comm: Comm, query_batch: int) -> float | None:
    """The lambda ratio one process would choose for all queries: held-out errors summed over this
    rank's query batches, then over ranks (in rank order). None when lambda is fixed."""
    from ..method.recovery import LassoRecovery

    if est.alpha != "auto" or est.alpha_ratio is not None:
        return None
    lr = LassoRecovery(alpha="auto", positive=est.positive, device=est.device, rule=est.lambda_rule)
    local: dict[float, np.ndarray] = {}
    for s in range(0, len(y), query_batch):
        for r, e in lr.validation_errors(est.design_, y[s:s + query_batch]).items():
            local[r] = local.get(r, 0.0) + e  # (n_val,) per held-out subset
    total: dict[float, np.ndarray] = {}
    for part in comm.all_gather_object(local):
        for r, e in part.items():
            total[r] = total.get(r, 0.0) + e
    best = LassoRecovery.best_ratio(total, lr.rule)
    logger.debug("lambda ratio validation errors over all queries: %s -> %s", {r: float(np.sum(e)) for r, e in total.items()}, best)
    return best


def attribute(ws, run: str, prompts, comm: Comm, args=None, out=None, progress: bool = True, dargs: DistArgs | None = None):
    """`pipeline.attribute` with the prompts split over the ranks of `comm` (all ranks call it with the
    same arguments). Rank 0 returns the ranked rows (a DataFrame, also written like pipeline.attribute
    writes them); the other ranks return None."""
    from ..store.locks import run_lock

    if args is not None and args.method != "stride":
        # the ranks keep only each prompt's top documents (recover_top), never a prompt's score for every document,
        # which the hybrid's z-scores need: say so instead of ranking by STRIDE alone under the hybrid's name
        raise InputError(f"--method {args.method} is not available in the multi-process attribute; run `stride attribute "
                         f"--method {args.method}` (one process) or drop --method")

    with run_lock(ws.run_dir(run)) if comm.is_main else contextlib.nullcontext():  # rank 0 holds the run for all ranks
        return _attribute(ws, run, prompts, comm, args, out, progress, dargs)


def _attribute(ws, run: str, prompts, comm: Comm, args, out, progress: bool, dargs):
    from ..method.activations import features_in_memory
    from ..method.arguments import AttributeArgs
    from .attribution import check_measurements, open_run, sync_attributions, write_attributions, write_generic
    from .prompts import generate, query_items, read_prompts
    from .progress import Reporter

    args = args or AttributeArgs()
    dargs = dargs or DistArgs()
    main = comm.is_main
    if out is not None and Path(out).suffix.lower() not in (".parquet", ".jsonl", ".csv"):
        raise InputError(f"--out {out}: use a .parquet, .jsonl or .csv file name")
    prompts = comm.agree(lambda: read_prompts(prompts) if isinstance(prompts, (str, Path)) else list(prompts))
    if not prompts:
        raise InputError("no prompts given")
    opened = comm.agree(open_run, ws, run, args)
    if opened.config.subsets.designs > 1:
        raise StrideError(f"run {run!r} has {opened.config.subsets.designs} designs, not supported under torchrun yet: "
                          "use `stride attribute` (one process)")
    rdir, config, task, cache, est = opened.rdir, opened.config, opened.task, opened.cache, opened.estimator
    comm.agree(lambda: sync_attributions(ws, run) if main else None)  # repair a copy left stale by a killed call
    rep = Reporter(rdir if main else None, run)
    try:
        rep.stage("attribute", f"{len(prompts)} prompts on {comm.world} processes")
        lo, hi = comm.block(len(prompts))
        mine = prompts[lo:hi]

        def measure_mine():
            gens = generate(task, mine, args) if mine else []
            if not gens:
                return gens, np.zeros((0, est.design_.K), np.float32), np.zeros(0, np.float32)
            y, base = est.measure(features_in_memory(task, query_items(gens, args.loss_on)))
            check_measurements(run, y, [g["query_id"] for g in gens])
            return gens, y, base

        gens, y, base = comm.agree(measure_mine)
        # every process measures the same seeded reference queries (deterministic); rank 0 saves them
        generic = comm.agree(opened.generic_component, args, main) if args.ranking == "specific" else None
        y_rank = y if generic is None else remove_generic(y, generic.y_mean)
        rep.update(0.5, "recovering")
        ratio = comm.agree(choose_ratio, est, y_rank, comm, dargs.query_batch)
        k = min(args.top_k, cache.n_docs)
        tops = comm.agree(recover_top, est, y_rank, k, dargs.query_batch, ratio)
        doc_ids = np.asarray(cache.doc_ids)
        rows = []
        for g, (hp, hm, vals), b in zip(gens, tops, base):
            scores = dict(zip(np.concatenate([hp, hm]).tolist(), vals.tolist()))
            for direction, idx in (("helpful", hp), ("harmful", hm)):
                for rank, j in enumerate(idx, 1):
                    rows.append({"query_id": g["query_id"], "prompt": g["prompt"], "continuation": g["continuation"],
                                 "direction": direction, "rank": rank, "doc_id": int(doc_ids[j]), "score": float(scores[int(j)]),
                                 "query_loss": float(b), "prompt_used": g["prompt_used"], "truncated": g["truncated"],
                                 "continuation_given": g.get("completion") is not None})
        gathered = comm.all_gather_object((rows, y))
        if not main:
            return None

        all_rows = [r for part, _ in gathered for r in part]
        df = write_attributions(ws, run, config, all_rows, np.concatenate([part_y for _, part_y in gathered]), out)
        if generic is not None:
            write_generic(ws, run, config, est.recover(generic.y_mean[None]).influence_[0], doc_ids, k)
        rep.stage("attributed", f"{len(prompts)} prompts attributed on {comm.world} processes")
        rep.finish("done")
        return df
    except KeyboardInterrupt:
        rep.finish("cancelled", "interrupted")
        raise
    except BaseException as exc:
        rep.finish("failed", str(exc))
        raise


