"""LDS benchmark harness: build or reuse the ground truth, run attribution methods, score them.

A method is any callable `method(ctx) -> (scores, timing)` (a bare scores array is accepted too):
`ctx` is the setting's context (`DigitsContext` / `LMContext`, see settings.py), `scores` a (Q, N)
array with positive = the training document helps the query (lowers its loss), `timing` a dict with
`fit_seconds` (index / training-side work) and `query_seconds`. Register one with

    from stride_core.bench.harness import METHODS
    METHODS["stride"] = my_stride_method

or pass `extra_methods={"stride": fn}` to `run_lds_bench`.

`results.json` in the output folder is a dict: `rows` (one per method: setting, method, lds_mean,
lds_ci_low, lds_ci_high, qs_lds_mean, fit_seconds, query_seconds, peak_host_mb, peak_gpu_mb, device,
n_models, n_queries, and more), `skipped` (methods that did not run, with the reason), `setting`,
`base_model` (fit report), `ground_truth` and `per_query` (per-query LDS of each method).
`peak_host_mb` is the method's peak resident memory *above* what the process held when it started
(sampled every 10 ms; ru_maxrss catches spikes between samples); `peak_gpu_mb` is torch's peak
allocated CUDA memory during the method (0 on CPU).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import resource
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import StrideError
from .baselines import BASELINES
from .peers import PEER_PACKAGES, PeerUnavailable
from .peers import register_all as register_peers
from .stride_method import register_all as register_stride
from .lds import lds, lds_summary, query_specific_lds
from .settings import SETTINGS

logger = logging.getLogger(__name__)

METHODS: dict[str, Callable] = dict(BASELINES)
register_stride(METHODS)  # "stride" and its ablation variants (stride_method.VARIANTS)
DEFAULT_METHODS = ["random", "generic", "tfidf", "repsim", "graddot"]
# Peer libraries (peers.py): method name -> the package it needs. A peer whose package is not
# importable is recorded in `skipped` ("not installed"); one that raises PeerUnavailable on a setting
# is recorded with its reason.
PEERS = dict(PEER_PACKAGES)
register_peers(METHODS)


def register_method(name: str, fn: Callable) -> None:
    METHODS[name] = fn


# ---------------------------------------------------------------------------------------- memory


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakMemory:
    """Context manager: peak host RSS above the starting RSS, and peak CUDA memory, during a block."""

    def __init__(self, device: str = "cpu", interval: float = 0.01):
        self.device, self.interval = device, interval
        self.host_mb = 0.0
        self.host_rss_mb = 0.0
        self.gpu_mb = 0.0

    def __enter__(self):
        self._base = _rss_mb()
        self._peak = self._base
        self._maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self._cuda = str(self.device).startswith("cuda")
        if self._cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        return self

    def _sample(self):
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, _rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        peak = max(self._peak, _rss_mb())
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if maxrss > self._maxrss0:  # the all-time peak was reached inside this block
            peak = max(peak, maxrss)
        self.host_rss_mb = peak
        self.host_mb = max(0.0, peak - self._base)
        if self._cuda:
            import torch

            torch.cuda.synchronize()
            self.gpu_mb = torch.cuda.max_memory_allocated() / 2**20
        return False


# ------------------------------------------------------------------------------------- scoring


def score_method(scores: np.ndarray, gt, extras: bool = True) -> dict:
    """LDS, query-specific LDS (and for digits the LDS on the margin) of a (Q, N) score matrix."""
    per_q = lds(scores, gt.masks, gt.outputs)
    qs = query_specific_lds(scores, gt.masks, gt.outputs) if gt.n_query > 1 else np.zeros(gt.n_query)
    s, sq = lds_summary(per_q), lds_summary(qs)
    out = {"lds_mean": s["mean"], "lds_ci_low": s["ci_low"], "lds_ci_high": s["ci_high"],
           "qs_lds_mean": sq["mean"], "qs_lds_ci_low": sq["ci_low"], "qs_lds_ci_high": sq["ci_high"],
           "_per_query": per_q, "_per_query_qs": qs}
    if extras and "margin" in gt.extras:
        out["margin_lds_mean"] = float(lds(scores, gt.masks, gt.extras["margin"], higher_output_is_worse=False).mean())
    return out


def run_method(name: str, fn: Callable, ctx, gt) -> dict:
    with PeakMemory(ctx.device) as mem:
        t0 = time.perf_counter()
        res = fn(ctx)
        total = time.perf_counter() - t0
    scores, timing = (res if isinstance(res, tuple) else (res, {"fit_seconds": 0.0, "query_seconds": total}))
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (gt.n_query, gt.masks.shape[1]):
        raise StrideError(f"method {name!r} returned scores of shape {scores.shape}; expected (Q, N) = "
                          f"{(gt.n_query, gt.masks.shape[1])}")
    row = {"setting": ctx.setting.name, "method": name, **score_method(scores, gt),
           "fit_seconds": float(timing.get("fit_seconds", 0.0)), "query_seconds": float(timing.get("query_seconds", 0.0)),
           "total_seconds": total, "peak_host_mb": mem.host_mb, "peak_host_rss_mb": mem.host_rss_mb,
           "peak_gpu_mb": mem.gpu_mb, "device": ctx.device, "n_models": gt.n_models, "n_queries": gt.n_query,
           "n_train": gt.masks.shape[1]}
    for k, v in timing.items():
        if k not in ("fit_seconds", "query_seconds"):
            row[f"info_{k}"] = v
    row["_scores"] = scores
    return row


# ---------------------------------------------------------------------------------------- bench

TABLE_COLS = ["method", "lds_mean", "lds_ci_low", "lds_ci_high", "qs_lds_mean", "fit_seconds", "query_seconds",
              "peak_host_mb", "peak_gpu_mb"]


def format_table(rows: list[dict], cols: list[str] = TABLE_COLS) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    w = [max(len(c), *(len(x[i]) for x in cells)) if cells else len(c) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(cols))]
    lines += ["  ".join(x[i].ljust(w[i]) for i in range(len(cols))) for x in cells]
    return "\n".join(lines)


def _parse_methods(methods) -> list[str]:
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    return list(methods)


def run_lds_bench(setting_name: str, out_dir, models: int | None = None, queries: int | None = None,
                  methods: list[str] | str | None = None, device: str = "auto",
                  extra_methods: dict[str, Callable] | None = None, cache_dir=None, progress: bool = True,
                  workers: int = 1, setting_overrides: dict | None = None, print_table: bool = True,
                  threads: int | None = None, noise_ceiling: int = 0) -> dict:
    """Build/reuse the ground truth of `setting_name` (models / queries default to the setting's),
    run `methods` (default: all baselines, then every other registered method, e.g. "stride", then
    the peers, which land in `skipped` when not installed),
    compute LDS and query-specific LDS, print a table, write `out_dir/results.json`; return it.
    `threads` sets torch's thread count while the methods run (None: leave it); ground-truth models
    always train with the setting's `train_threads` (default 1). `noise_ceiling=n` retrains the
    first n ground-truth masks with fresh seeds and reports how reproducible the outputs are
    (`ground_truth.rerun`, see `ground_truth.rerun_consistency`)."""
    from ..store.models import resolve_device
    from .ground_truth import compute_ground_truth, rerun_consistency
    from .settings import get_setting, torch_threads

    dev = resolve_device(device)
    setting = get_setting(setting_name, n_models=models, n_query=queries, **(setting_overrides or {}))
    cache_dir = Path(cache_dir or os.environ.get("STRIDE_BENCH_CACHE", "workspace/bench")).expanduser()
    out_dir = Path(out_dir).expanduser()
    registry = {**METHODS, **(extra_methods or {})}
    if methods is None:
        # ablation variants ("stride-...") run only when named
        wanted = list(DEFAULT_METHODS) + [m for m in registry if m not in DEFAULT_METHODS and not m.startswith("stride-")] + \
            [m for m in PEERS if m not in registry]
    else:
        wanted = _parse_methods(methods)
    unknown = [m for m in wanted if m not in registry and m not in PEERS]
    if unknown:
        raise StrideError(f"unknown method(s) {unknown}: available {sorted(registry)} (peers: {sorted(PEERS)})")

    t0 = time.time()
    ctx = setting.build_context(cache_dir, device=dev, progress=progress)
    t_ctx = time.time() - t0
    t0 = time.time()
    gt = compute_ground_truth(setting, cache_dir, ctx=ctx, device=dev, progress=progress, workers=workers)
    t_gt = time.time() - t0
    logger.info("ground truth: %d models x %d queries (%d trained now, %.0fs; mean %.2fs per model)",
                gt.n_models, gt.n_query, gt.n_trained, t_gt, float(np.mean(gt.train_seconds)))

    rerun = None
    if noise_ceiling:
        rerun = rerun_consistency(setting, ctx, gt, noise_ceiling, device=dev, progress=progress, workers=workers)
        logger.info("rerun consistency over %d masks: rho %.3f (query-specific %.3f)", rerun["n_masks"],
                    rerun["mean_rho"], rerun["mean_rho_query_specific"])

    rows, skipped, per_query = [], [], {}
    peers_to_check = [m for m in wanted if m in PEERS and m not in registry]
    for m in peers_to_check:
        if importlib.util.find_spec(PEERS[m]) is None:
            skipped.append({"method": m, "reason": f"not installed (the {PEERS[m]!r} package is not importable)"})
        else:
            skipped.append({"method": m, "reason": "installed, but no adapter is registered in METHODS"})
    for m in [m for m in wanted if m in registry]:
        if m in PEERS and importlib.util.find_spec(PEERS[m]) is None:
            skipped.append({"method": m, "reason": f"not installed (the {PEERS[m]!r} package is not importable; "
                                                   "install the `bench` extra)"})
            continue
        logger.info("running %s on %s", m, setting.name)
        try:
            with torch_threads(threads):
                row = run_method(m, registry[m], ctx, gt)
        except PeerUnavailable as exc:
            logger.warning("method %s cannot run on %s: %s", m, setting.name, exc)
            skipped.append({"method": m, "reason": f"cannot run on {setting.name}: {exc}"})
            continue
        except Exception as exc:
            logger.exception("method %s failed", m)
            skipped.append({"method": m, "reason": f"failed: {type(exc).__name__}: {exc}"})
            continue
        per_query[m] = {"lds": row.pop("_per_query").tolist(), "qs_lds": row.pop("_per_query_qs").tolist()}
        # (Q, N) scores, rows = the setting's queries, columns = training documents in ctx order: for offline
        # combinations and checks (the ground truth they are scored against is at ground_truth.path)
        (out_dir / "scores").mkdir(parents=True, exist_ok=True)
        np.save(out_dir / "scores" / f"{m}.npy", row.pop("_scores").astype(np.float32))
        rows.append(row)
        logger.info("%s: LDS %.3f [%.3f, %.3f], query-specific %.3f", m, row["lds_mean"], row["lds_ci_low"],
                    row["lds_ci_high"], row["qs_lds_mean"])

    outputs = gt.outputs
    result = {
        "rows": rows, "skipped": skipped,
        "setting": setting.to_dict(),
        "base_model": ctx.base_metrics,
        "ground_truth": {
            "path": str(gt.path), "key": gt.key, "n_models": gt.n_models, "n_queries": gt.n_query,
            "n_train": int(gt.masks.shape[1]), "mean_subset_fraction": float(gt.masks.mean()),
            "mean_train_seconds_per_model": float(np.mean(gt.train_seconds)), "n_trained_now": gt.n_trained,
            "seconds": t_gt, "context_seconds": t_ctx,
            "output_mean": float(outputs.mean()), "output_std_across_models": float(outputs.std(axis=0).mean()),
            "output_std_across_queries": float(outputs.std(axis=1).mean()),
            # share of the across-model variance that all queries have in common (generic effect)
            "shared_variance_fraction": _shared_variance(outputs),
            "rerun": rerun,
        },
        "per_query": per_query,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "results.json", result)
    if print_table:
        print(f"{setting.name}: {gt.n_models} ground-truth models x {gt.n_query} queries, N={gt.masks.shape[1]}, "
              f"device {dev}")
        print(format_table(rows))
        if rerun:
            print(f"ground-truth rerun consistency ({rerun['n_masks']} masks, fresh seeds): rho {rerun['mean_rho']:.3f}, "
                  f"query-specific {rerun['mean_rho_query_specific']:.3f} (approx. LDS ceiling "
                  f"{rerun['approx_lds_ceiling']:.2f} / {rerun['approx_qs_lds_ceiling']:.2f})")
        for s in skipped:
            print(f"skipped {s['method']}: {s['reason']}")
        print(f"wrote {out_dir / 'results.json'}")
    return result


def _shared_variance(outputs: np.ndarray) -> float:
    """Variance over models of the per-model mean output, relative to the mean per-query variance."""
    if outputs.shape[0] < 2:
        return 0.0
    per_q = outputs.var(axis=0, ddof=1).mean()
    shared = outputs.mean(axis=1).var(ddof=1)
    return float(shared / per_q) if per_q > 0 else 0.0


def write_json(path: Path, obj: dict) -> None:
    """Write a results file atomically (a reader never sees half of it); numpy values become plain JSON."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, default=_json_default))
    os.replace(tmp, path)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


# ------------------------------------------------------------------------------------------- cli


def cmd_bench_lds(args):
    from ..store.workspace import workspace_at

    cache = args.cache or os.environ.get("STRIDE_BENCH_CACHE") or workspace_at(args.workspace).root / "bench"
    run_lds_bench(args.setting, args.out, models=args.models, queries=args.queries, methods=args.methods,
                  device=args.device, cache_dir=cache, progress=not args.no_progress, workers=args.workers,
                  threads=args.threads, noise_ceiling=args.noise_ceiling)


def register(subparsers, common_parent):
    """`stride bench` and `stride bench lds ...`; returns the bench subparsers (bench.commands adds the other actions)."""
    pb = subparsers.add_parser("bench", help="benchmarks: LDS against retrained ground-truth models", parents=[common_parent])
    sb = pb.add_subparsers(dest="bench_command", metavar="ACTION", required=True)
    x = sb.add_parser("lds", help="linear datamodeling score of attribution methods on a benchmark setting",
                      parents=[common_parent])
    x.add_argument("--setting", required=True, choices=sorted(SETTINGS))
    x.add_argument("--models", type=int, default=None, help="ground-truth models (default: 100 digits, 32 tiny-lm)")
    x.add_argument("--queries", type=int, default=None, help="queries (default: 100 digits, 50 tiny-lm)")
    x.add_argument("--methods", default=None,
                   help=f"comma-separated (default: {','.join(DEFAULT_METHODS)} + registered ones; peers: "
                        f"{','.join(PEERS)})")
    x.add_argument("--device", default="auto", help="auto, cpu or cuda")
    x.add_argument("--cache", default=None, help="ground-truth / base-model cache folder "
                                                 "(default: $STRIDE_BENCH_CACHE or workspace/bench)")
    x.add_argument("--workers", type=int, default=1, help="processes training ground-truth models (default 1)")
    x.add_argument("--threads", type=int, default=None, help="torch threads while methods run (default: torch's)")
    x.add_argument("--noise-ceiling", type=int, default=0, metavar="N",
                   help="retrain the first N masks with fresh seeds to measure ground-truth reproducibility")
    x.add_argument("--out", required=True, help="output folder for results.json")
    x.set_defaults(func=cmd_bench_lds)
    return sb
