"""Top-k counterfactual on tiny-lm: does removing a query's top-k documents hurt it more than removing k
random documents?

    stride bench counterfactual --setting tiny-lm --queries 20 --k 10,50 --methods stride,tfidf \\
        --random-seeds 2 --cache DIR --out DIR

For each query q and each method m, the method's (Q, N) scores (the LDS harness registry: positive =
helps) give q's top-k documents; a model is retrained with the setting's own training routine
(`Setting.train_subset`) on every training document except those k, and q's loss is measured. The
loss increase is taken against the base model (all documents). Every retrain uses the base model's
seed (`base_seed`), so the only difference from the base model is the data. The control removes k
documents drawn at random (query-independent, so one retrain per k and random seed serves all
queries); its increase is averaged over the random seeds.

Per (method, k) the report gives the mean loss increase over queries with a 95% t-interval, the mean
random-removal increase, their ratio (the issue's target: >= 2), and the share of queries whose top-k
increase beats their random increase. Each retrain is cached in `OUT/retrains/` (keyed by the removed
documents, the seed and the setting), and method scores in `OUT/scores/`, so an interrupted run
resumes; results go to `OUT/counterfactual.json`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from ..errors import StrideError
from .settings import SETTINGS

logger = logging.getLogger(__name__)


def _key(setting, fingerprint: str, removed: np.ndarray, seed: int) -> str:
    blob = json.dumps({"gt": setting.base_fields(), "fp": fingerprint, "removed": sorted(int(i) for i in removed),
                       "seed": int(seed)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def retrain_without(setting, ctx, removed: np.ndarray, seed: int, device: str = "cpu") -> dict:
    """Train on all training documents but `removed` (indices into ctx.train_ids) and measure every
    query of ctx. Returns {"losses": (Q,) list, "train_seconds": float, "n_removed": int}."""
    from .settings import torch_threads

    mask = np.ones(ctx.n_train, dtype=bool)
    mask[np.asarray(removed, dtype=np.int64)] = False
    with torch_threads(setting.train_threads):
        t0 = time.time()
        model = setting.train_subset(ctx, mask, seed, device)
        secs = time.time() - t0
        losses = setting.query_outputs(ctx, model, device)["loss"]
    return {"losses": [float(x) for x in losses], "train_seconds": secs, "n_removed": int((~mask).sum())}


_WORKER: dict = {}


def _worker_init(setting, cache_dir, device, threads):
    import torch

    torch.set_num_threads(threads)
    _WORKER.update(setting=setting, device=device,
                   ctx=setting.build_context(cache_dir, device=device, progress=False))


def _worker_run(job):
    removed, seed = job
    return retrain_without(_WORKER["setting"], _WORKER["ctx"], np.asarray(removed), seed, _WORKER["device"])


def _run_jobs(setting, ctx, jobs: list[tuple[list[int], int]], device: str, workers: int, cache_dir):
    if workers <= 1:
        for removed, seed in jobs:
            yield retrain_without(setting, ctx, np.asarray(removed), seed, device)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, setting.train_threads or 1)
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                             initargs=(setting, str(cache_dir), device, threads)) as ex:
        yield from ex.map(_worker_run, jobs)


def top_k(scores_row: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores (most helpful first; ties broken by index)."""
    order = np.lexsort((np.arange(len(scores_row)), -np.asarray(scores_row, dtype=np.float64)))
    return order[:k]


def _t_interval(x: np.ndarray) -> tuple[float, float, float]:
    from scipy import stats

    x = np.asarray(x, dtype=np.float64)
    m = float(x.mean())
    if len(x) < 2:
        return m, m, m
    h = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return m, m - h, m + h


def summarize(base: np.ndarray, topk_losses: dict, random_losses: dict) -> list[dict]:
    """Rows per (method, k). topk_losses[(method, k)] = (Q,) loss of each query after removing its own
    top-k; random_losses[k] = (R, Q) losses after each random removal of k documents."""
    rows = []
    for (method, k), lq in topk_losses.items():
        inc = np.asarray(lq) - base
        rnd = np.asarray(random_losses[k]).mean(0) - base  # (Q,) mean random increase per query
        m, lo, hi = _t_interval(inc)
        rm, rlo, rhi = _t_interval(rnd)
        dm, dlo, dhi = _t_interval(inc - rnd)
        rows.append({"method": method, "k": int(k), "n_queries": int(len(inc)),
                     "topk_increase_mean": m, "topk_increase_ci_low": lo, "topk_increase_ci_high": hi,
                     "random_increase_mean": rm, "random_increase_ci_low": rlo, "random_increase_ci_high": rhi,
                     "diff_mean": dm, "diff_ci_low": dlo, "diff_ci_high": dhi,
                     "ratio_to_random": float(m / rm) if rm > 0 else float("nan"),
                     "share_queries_above_random": float((inc > rnd).mean()),
                     "n_random_removals": int(np.asarray(random_losses[k]).shape[0])})
    return rows


def run_counterfactual(setting_name: str, out_dir, queries: int = 20, ks=(10, 50), methods=("stride", "tfidf"),
                       random_seeds: int = 2, device: str = "auto", cache_dir=None, workers: int = 1,
                       threads: int | None = None, extra_methods: dict | None = None,
                       setting_overrides: dict | None = None, print_table: bool = True) -> dict:
    from ..method.arguments import parse_int_list
    from ..store.models import resolve_device
    from .harness import METHODS, write_json
    from .settings import get_setting, torch_threads

    dev = resolve_device(device)
    setting = get_setting(setting_name, n_query=queries, **(setting_overrides or {}))
    cache_dir = Path(cache_dir or os.environ.get("STRIDE_BENCH_CACHE", "workspace/bench")).expanduser()
    out_dir = Path(out_dir).expanduser()
    (out_dir / "retrains").mkdir(parents=True, exist_ok=True)
    (out_dir / "scores").mkdir(parents=True, exist_ok=True)
    registry = {**METHODS, **(extra_methods or {})}
    methods = [m.strip() for m in methods.split(",")] if isinstance(methods, str) else list(methods)
    ks = parse_int_list(ks, "--k", minimum=1) if isinstance(ks, str) else [int(k) for k in ks]
    bad = [m for m in methods if m not in registry]
    if bad:
        raise StrideError(f"unknown method(s) {bad}: available {sorted(registry)}")
    if not ks or min(ks) < 1:
        raise StrideError("k values must be >= 1")

    ctx = setting.build_context(cache_dir, device=dev, progress=False)
    if max(ks) >= ctx.n_train:
        raise StrideError(f"k must be below the number of training documents ({ctx.n_train})")
    base = np.asarray(setting.query_outputs(ctx, _base_model(ctx), dev)["loss"], dtype=np.float64)
    seed = setting.base_seed

    # method scores (cached: STRIDE takes minutes)
    scores, method_seconds = {}, {}
    for m in methods:
        path = out_dir / "scores" / f"{m}-{ctx.fingerprint}-{setting.base_key()}-q{ctx.n_query}.npy"
        if path.exists():
            scores[m] = np.load(path)
            continue
        t0 = time.perf_counter()
        with torch_threads(threads):
            res = registry[m](ctx)
        method_seconds[m] = time.perf_counter() - t0
        s = np.asarray(res[0] if isinstance(res, tuple) else res, dtype=np.float64)
        if s.shape != (ctx.n_query, ctx.n_train):
            raise StrideError(f"method {m!r} returned scores of shape {s.shape}; expected {(ctx.n_query, ctx.n_train)}")
        np.save(path, s)
        scores[m] = s

    # jobs: (removed documents, seed) -> which results they feed
    jobs: dict[str, tuple[list[int], int]] = {}
    topk_keys: dict[tuple[str, int], list[str]] = {}
    for m in methods:
        for k in ks:
            topk_keys[(m, k)] = []
            for q in range(ctx.n_query):
                removed = top_k(scores[m][q], k)
                key = _key(setting, ctx.fingerprint, removed, seed)
                jobs[key] = (sorted(int(i) for i in removed), seed)
                topk_keys[(m, k)].append(key)
    random_keys: dict[int, list[str]] = {}
    for k in ks:
        random_keys[k] = []
        for r in range(random_seeds):
            removed = np.random.default_rng(np.random.SeedSequence([4049, k, r])).choice(ctx.n_train, k, replace=False)
            key = _key(setting, ctx.fingerprint, removed, seed)
            jobs[key] = (sorted(int(i) for i in removed), seed)
            random_keys[k].append(key)

    done = {p.stem: json.loads(p.read_text()) for p in (out_dir / "retrains").glob("*.json")}
    todo = [k for k in jobs if k not in done]
    logger.info("counterfactual: %d retrains needed (%d cached), %d queries, k=%s, methods %s, %d random seeds",
                len(jobs), len(jobs) - len(todo), ctx.n_query, ks, methods, random_seeds)
    t0 = time.time()
    for i, res in enumerate(_run_jobs(setting, ctx, [jobs[k] for k in todo], dev, workers, cache_dir)):
        key = todo[i]
        res["removed"] = jobs[key][0]
        res["seed"] = seed
        tmp = out_dir / "retrains" / f".{key}.tmp"
        tmp.write_text(json.dumps(res))
        os.replace(tmp, out_dir / "retrains" / f"{key}.json")
        done[key] = res
        logger.info("retrain %d/%d done (%.0fs; %.0fs elapsed)", i + 1, len(todo), res["train_seconds"], time.time() - t0)

    topk_losses = {(m, k): np.array([done[key]["losses"][q] for q, key in enumerate(keys)])
                   for (m, k), keys in topk_keys.items()}
    random_losses = {k: np.array([done[key]["losses"] for key in keys]) for k, keys in random_keys.items()}
    rows = summarize(base, topk_losses, random_losses)
    for r in rows:
        r["setting"] = setting.name
        r["device"] = dev
    result = {
        "rows": rows, "setting": setting.to_dict(), "base_query_loss": base.tolist(),
        "queries": int(ctx.n_query), "ks": ks, "methods": methods, "random_seeds": int(random_seeds),
        "retrain_seed": int(seed), "method_seconds": method_seconds,
        "mean_retrain_seconds": float(np.mean([done[k]["train_seconds"] for k in jobs])),
        "n_retrains": len(jobs),
        "per_query": {f"{m}@{k}": (topk_losses[(m, k)] - base).tolist() for (m, k) in topk_losses},
        "per_query_random": {str(k): (random_losses[k] - base).tolist() for k in random_losses},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_json(out_dir / "counterfactual.json", result)
    if print_table:
        print(f"{setting.name}: top-k counterfactual, {ctx.n_query} queries, retrain seed {seed}, "
              f"{random_seeds} random removal(s) per k, device {dev}")
        print(format_table(rows))
        print(f"wrote {out_dir / 'counterfactual.json'}")
    return result


def _base_model(ctx):
    return ctx.load_model() if hasattr(ctx, "load_model") else ctx.model


def format_table(rows: list[dict]) -> str:
    head = f"{'method':<12} {'k':>3}  {'top-k loss increase [95% CI]':<30} {'random increase':<16} {'ratio':>6}  {'share > random':>14}"
    lines = [head]
    for r in rows:
        ci = f"{r['topk_increase_mean']:+.4f} [{r['topk_increase_ci_low']:+.4f}, {r['topk_increase_ci_high']:+.4f}]"
        lines.append(f"{r['method']:<12} {r['k']:>3}  {ci:<30} {r['random_increase_mean']:+.4f}{'':<9} "
                     f"{r['ratio_to_random']:>6.2f}  {r['share_queries_above_random']:>14.2f}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- cli


def cmd_bench_counterfactual(args):
    from ..store.workspace import workspace_at

    cache = args.cache or os.environ.get("STRIDE_BENCH_CACHE") or workspace_at(args.workspace).root / "bench"
    run_counterfactual(args.setting, args.out, queries=args.queries, ks=args.k, methods=args.methods,
                       random_seeds=args.random_seeds, device=args.device, cache_dir=cache, workers=args.workers,
                       threads=args.threads)


def register(bench_subparsers, common_parent):
    """`stride bench counterfactual ...` (added by stride_core.bench.commands)."""
    x = bench_subparsers.add_parser("counterfactual", parents=[common_parent],
                                    help="remove each query's top-k documents, retrain, compare with random removal")
    x.add_argument("--setting", default="tiny-lm", choices=sorted(SETTINGS))
    x.add_argument("--queries", type=int, default=20, help="first Q queries of the setting (default 20)")
    x.add_argument("--k", default="10,50", help="comma-separated k values (default 10,50)")
    x.add_argument("--methods", default="stride,tfidf", help="comma-separated methods ranking the documents")
    x.add_argument("--random-seeds", type=int, default=2, help="random removals per k (default 2)")
    x.add_argument("--device", default="auto", help="auto, cpu or cuda")
    x.add_argument("--cache", default=None, help="bench cache folder (base models; default as for `bench lds`)")
    x.add_argument("--workers", type=int, default=1, help="retraining processes (default 1)")
    x.add_argument("--threads", type=int, default=None, help="torch threads while methods score")
    x.add_argument("--out", required=True, help="output folder (counterfactual.json, retrain cache)")
    x.set_defaults(func=cmd_bench_counterfactual)
