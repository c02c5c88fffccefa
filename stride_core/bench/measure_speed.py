"""`stride bench measure`: the two measurement paths side by side on a finished run.

`measurement.measure` can form the steered logits of subset k either through the head for every token
(`direct`: T x Kc x D x V multiply-adds per chunk) or, because the head is affine, by projecting the R
rows of each a_k through the head once and mixing them per token (`low_rank`: Kc x R x D x V + T x R x
Kc x V). This bench times both on the same queries (the first `queries` documents of the run, every
token scored, as the audits use them), alternating the two paths `repeats` times so machine noise hits
both alike, and reports the medians, their ratio and the largest difference in y between the paths.
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

    from ..activations import features_in_memory
    from ..arguments import AttributeArgs
    from ..corpus import load_documents
    from ..errors import StrideError
    from ..measurement import measure
    from ..pipeline import open_run

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


def cmd_bench_measure(args):
    from ..cli import _ws

    run_measure_bench(_ws(args), args.run, queries=args.queries, repeats=args.repeats, device=args.device, out=args.out)


def register(bench_subparsers, common_parent):
    """`stride bench measure ...` (appended to stride_core.cli_ext.BENCH_REGISTRATIONS)."""
    x = bench_subparsers.add_parser("measure", parents=[common_parent],
                                    help="time the direct and low-rank measurement paths on a finished run")
    x.add_argument("--run", required=True, help="a finished run in the workspace")
    x.add_argument("--queries", type=int, default=32, help="the run's first Q documents as queries (default 32)")
    x.add_argument("--repeats", type=int, default=3, help="alternating timings per path (default 3)")
    x.add_argument("--device", default="auto", help="auto, cpu or cuda")
    x.add_argument("--out", default=None, help="write the result as JSON here")
    x.set_defaults(func=cmd_bench_measure)
