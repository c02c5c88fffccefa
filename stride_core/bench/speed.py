"""Speed benches that compare two implementations of one step side by side, in one process.

`stride bench measure`: the two measurement paths on a finished run.

`measurement.measure` can form the steered logits of subset k either through the head for every token
(`direct`: T x Kc x D x V multiply-adds per chunk) or, because the head is affine, by projecting the R
rows of each a_k through the head once and mixing them per token (`low_rank`: Kc x R x D x V + T x R x
Kc x V). This bench times both on the same queries (the first `queries` documents of the run, every
token scored, as the audits use them), alternating the two paths `repeats` times so machine noise hits
both alike, and reports the medians, their ratio and the largest difference in y between the paths.

`stride bench recovery`: the Lasso (`LassoRecovery` with the automatic lambda, as `stride attribute`
runs it) with plain FISTA over all N documents against the working-set solver, on a planted problem:
a random design (N, K, S), `queries` influence vectors with `support` non-zero documents each, y = M w
+ noise. Reports the medians, the speed-up, the largest relative difference of w and whether the
planted documents are recovered by both.
"""

from __future__ import annotations

import json
import logging
import platform
import statistics
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def run_measure_bench(ws, run: str, queries: int = 32, repeats: int = 3, device: str = "auto", out=None) -> dict:
    import torch

    from ..method.activations import features_in_memory
    from ..method.arguments import AttributeArgs
    from ..store.corpus import load_documents
    from ..errors import StrideError
    from ..method.measurement import measure
    from ..runs.attribution import open_run

    if queries < 1 or repeats < 1:
        raise StrideError("queries and repeats must be >= 1")
    opened = open_run(ws, run, AttributeArgs(device=device))
    ids = [int(d) for d in opened.doc_ids[:queries]]
    docs = load_documents(ws, opened.config.corpus, ["doc_id", "text"], doc_ids=ids)
    qfeat = features_in_memory(opened.task, opened.encode(docs["text"].tolist(), [str(d) for d in docs["doc_id"]]))
    dev = opened.estimator.device
    times: dict[str, list[float]] = {"direct": [], "low_rank": []}
    ys = {}
    for _ in range(repeats):
        for path in ("direct", "low_rank"):
            ys[path], secs = [], 0.0
            for m in opened.estimator._members():
                if str(dev).startswith("cuda"):
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                y, _ = measure(qfeat, m.ops, opened.task.head, dev, low_rank=(path == "low_rank"))
                if str(dev).startswith("cuda"):
                    torch.cuda.synchronize()
                secs += time.perf_counter() - t0
                ys[path].append(y)
            times[path].append(secs)
    ops = opened.estimator._members()[0].ops
    med = {p: statistics.median(t) for p, t in times.items()}
    y_d, y_l = np.concatenate(ys["direct"], axis=1), np.concatenate(ys["low_rank"], axis=1)
    result = {"run": run, "queries": len(ids), "query_tokens": int(len(qfeat.target)),
              "K": int(y_d.shape[1]), "R": ops.R, "D": ops.C, "repeats": repeats, "device": str(dev),
              "direct_s": round(med["direct"], 3), "low_rank_s": round(med["low_rank"], 3),
              "speedup": round(med["direct"] / max(med["low_rank"], 1e-12), 2),
              "max_abs_dy": float(np.abs(y_d - y_l).max()), "y_sd": float(y_d.std()),
              "times": times, "machine": platform.platform(), "threads": torch.get_num_threads(),
              "date": time.strftime("%Y-%m-%d")}
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1))
    print(f"measure bench: run {run!r}, {result['queries']} queries, K={result['K']}, R={ops.R}, D={ops.C}, device {dev}, "
          f"median of {repeats}: direct {med['direct']:.2f} s, low-rank {med['low_rank']:.2f} s "
          f"({result['speedup']:.2f}x); max |y_direct - y_low_rank| {result['max_abs_dy']:.2e} (y sd {result['y_sd']:.3f})")
    return result


def run_recovery_bench(N: int = 100_000, K: int = 1000, S: int = 10, queries: int = 1, support: int = 20,
                       noise: float = 0.3, repeats: int = 3, device: str = "cpu", seed: int = 0, out=None) -> dict:
    import torch

    from ..method import recovery
    from ..errors import StrideError
    from ..method.subsets import SubsetDesign

    if min(N, K, S, queries, support, repeats) < 1 or K > N or support > N:
        raise StrideError("N, K, S, queries, support, repeats must be >= 1, with K <= N and support <= N")
    design = SubsetDesign.random(np.arange(N), K, S, seed)
    g = np.random.default_rng(seed)
    W = np.zeros((queries, N))
    for q in range(queries):
        W[q, g.choice(N, support, replace=False)] = g.normal(0, 1, support)
    members = np.asarray(design.members)  # (N, S)
    y = np.stack([sum(np.bincount(members[:, s], weights=W[q], minlength=K) for s in range(S)) for q in range(queries)])
    y = y + g.normal(0, noise, y.shape)

    times: dict[str, list[float]] = {"full": [], "working_set": []}
    w_out = {}
    for _ in range(repeats):
        for name in ("full", "working_set"):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            w_out[name] = recovery.LassoRecovery(device=device, working_set=(name == "working_set")).fit(design, y).influence_
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    med = {p: statistics.median(t) for p, t in times.items()}
    full, ws = w_out["full"], w_out["working_set"]
    planted = [np.flatnonzero(W[q]) for q in range(queries)]
    result = {"N": N, "K": K, "S": S, "queries": queries, "support": support, "noise": noise, "repeats": repeats,
              "device": device, "full_s": round(med["full"], 3), "working_set_s": round(med["working_set"], 3),
              "speedup": round(med["full"] / max(med["working_set"], 1e-12), 2),
              "max_rel_dw": float(np.abs(full - ws).max() / max(np.abs(full).max(), 1e-12)),
              "same_support": bool(np.array_equal(full != 0, ws != 0)),
              "planted_found_full": float(np.mean([np.isin(p, np.flatnonzero(full[q])).mean() for q, p in enumerate(planted)])),
              "planted_found_working_set": float(np.mean([np.isin(p, np.flatnonzero(ws[q])).mean() for q, p in enumerate(planted)])),
              "times": times, "machine": platform.platform(), "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1))
    print(f"recovery bench: N={N}, K={K}, S={S}, {queries} queries, {support} planted documents each, device {device}, "
          f"median of {repeats}: full {med['full']:.2f} s, working set {med['working_set']:.2f} s ({result['speedup']:.1f}x); "
          f"same support {result['same_support']}, max relative |dw| {result['max_rel_dw']:.1e}, planted found "
          f"{result['planted_found_full']:.0%} / {result['planted_found_working_set']:.0%}")
    return result


def cmd_bench_recovery(args):
    run_recovery_bench(N=args.N, K=args.K, S=args.S, queries=args.queries, support=args.support, noise=args.noise,
                       repeats=args.repeats, device=args.device, out=args.out)


def cmd_bench_measure(args):
    from ..store.workspace import workspace_at

    run_measure_bench(workspace_at(args.workspace), args.run, queries=args.queries, repeats=args.repeats, device=args.device, out=args.out)


def register(bench_subparsers, common_parent):
    """`stride bench measure|recovery ...` (added by stride_core.bench.commands)."""
    x = bench_subparsers.add_parser("measure", parents=[common_parent],
                                    help="time the direct and low-rank measurement paths on a finished run")
    x.add_argument("--run", required=True, help="a finished run in the workspace")
    x.add_argument("--queries", type=int, default=32, help="the run's first Q documents as queries (default 32)")
    x.add_argument("--repeats", type=int, default=3, help="alternating timings per path (default 3)")
    x.add_argument("--device", default="auto", help="auto, cpu or cuda")
    x.add_argument("--out", default=None, help="write the result as JSON here")
    x.set_defaults(func=cmd_bench_measure)
    x = bench_subparsers.add_parser("recovery", parents=[common_parent],
                                    help="time the Lasso with plain FISTA vs the working-set solver on a planted problem")
    x.add_argument("--N", type=int, default=100_000, help="documents (default 100000)")
    x.add_argument("--K", type=int, default=1000, help="subsets (default 1000)")
    x.add_argument("--S", type=int, default=10, help="subsets per document (default 10)")
    x.add_argument("--queries", type=int, default=1, help="queries solved together (default 1: one prompt)")
    x.add_argument("--support", type=int, default=20, help="planted non-zero documents per query (default 20)")
    x.add_argument("--noise", type=float, default=0.3, help="Gaussian noise on y (default 0.3)")
    x.add_argument("--repeats", type=int, default=3, help="alternating timings per solver (default 3)")
    x.add_argument("--device", default="cpu", help="cpu or cuda")
    x.add_argument("--out", default=None, help="write the result as JSON here")
    x.set_defaults(func=cmd_bench_recovery)
