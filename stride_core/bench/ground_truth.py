"""Ground truth for LDS: M models, each retrained on its own random subset (mask) of the training set,
with every query's output recorded.

Cache layout (Parquet, one row per model; resumable, prefix-stable):

    DIR/<setting>/ground_truth/<key>/gt.parquet   model, seed, train_seconds, mask (packed bits),
                                                  loss (Q floats) [, margin (Q floats)]
    DIR/<setting>/ground_truth/<key>/meta.json    setting fields, key, n_train, n_query, n_models

`key` hashes every setting field that changes the ground truth (not `n_query` / `n_models`) plus a
fingerprint of the data, so a changed argument recomputes and the same arguments reuse. A request
for fewer models or queries than cached reuses a prefix; more models trains only the missing ones
(model m's mask and seed depend on m alone); more queries than cached recomputes.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import StrideError

logger = logging.getLogger(__name__)

GT_FILE = "gt.parquet"
META_FILE = "meta.json"


@dataclass
class GroundTruth:
    """masks (M, N) bool; outputs (M, Q) float64 = the query loss (higher = worse);
    extras: other (M, Q) outputs (digits: margin); seeds / train_seconds (M,)."""

    setting: str
    key: str
    masks: np.ndarray
    outputs: np.ndarray
    extras: dict = field(default_factory=dict)
    seeds: np.ndarray = None
    train_seconds: np.ndarray = None
    path: Path | None = None
    n_trained: int = 0  # models trained by the call that returned this (0 = all from cache)

    @property
    def n_models(self) -> int:
        return self.masks.shape[0]

    @property
    def n_query(self) -> int:
        return self.outputs.shape[1]

    def head(self, n_models: int, n_query: int) -> "GroundTruth":
        return replace(self, masks=self.masks[:n_models], outputs=self.outputs[:n_models, :n_query],
                       extras={k: v[:n_models, :n_query] for k, v in self.extras.items()},
                       seeds=self.seeds[:n_models], train_seconds=self.train_seconds[:n_models])


def gt_dir(cache_dir, setting, fingerprint: str) -> Path:
    return Path(cache_dir) / setting.name / "ground_truth" / setting.gt_key(fingerprint)


# ------------------------------------------------------------------------------------------ io


def _save(path: Path, rows: list[dict], meta: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.mkdir(parents=True, exist_ok=True)
    cols = {
        "model": pa.array([r["model"] for r in rows], pa.int32()),
        "seed": pa.array([r["seed"] for r in rows], pa.int64()),
        "train_seconds": pa.array([r["train_seconds"] for r in rows], pa.float64()),
        "mask": pa.array([np.packbits(r["mask"]).tobytes() for r in rows], pa.binary()),
    }
    for k in rows[0]["outputs"]:
        cols[k] = pa.array([np.asarray(r["outputs"][k], dtype=np.float64) for r in rows], pa.list_(pa.float64()))
    tmp = path / f".{GT_FILE}.tmp{os.getpid()}"
    pq.write_table(pa.table(cols), tmp)
    os.replace(tmp, path / GT_FILE)
    tmp = path / f".{META_FILE}.tmp{os.getpid()}"
    tmp.write_text(json.dumps({**meta, "n_models": len(rows)}, indent=1, default=str))
    os.replace(tmp, path / META_FILE)


def _load(path: Path, key: str) -> tuple[list[dict], dict] | None:
    import pyarrow.parquet as pq

    if not (path / GT_FILE).exists() or not (path / META_FILE).exists():
        return None
    try:
        meta = json.loads((path / META_FILE).read_text())
        t = pq.read_table(path / GT_FILE).to_pydict()
    except Exception as exc:  # a corrupt cache is recomputed, not trusted
        logger.warning("ignoring unreadable ground-truth cache %s (%s)", path, exc)
        return None
    if meta.get("key") != key:
        return None
    n_train = int(meta["n_train"])
    out_keys = [k for k in t if k not in ("model", "seed", "train_seconds", "mask")]
    rows = []
    for i, m in enumerate(t["model"]):
        if m != i:
            logger.warning("ground-truth cache %s is not a prefix (row %d is model %d); recomputing", path, i, m)
            return None
        mask = np.unpackbits(np.frombuffer(t["mask"][i], dtype=np.uint8))[:n_train].astype(bool)
        rows.append({"model": m, "seed": t["seed"][i], "train_seconds": t["train_seconds"][i], "mask": mask,
                     "outputs": {k: np.asarray(t[k][i], dtype=np.float64) for k in out_keys}})
    return rows, meta


def load_ground_truth(cache_dir, setting, fingerprint: str) -> GroundTruth | None:
    """The cached ground truth for these arguments (all cached models and queries), or None."""
    path = gt_dir(cache_dir, setting, fingerprint)
    got = _load(path, setting.gt_key(fingerprint))
    if not got or not got[0]:
        return None
    return _to_gt(setting, got[0], path, 0)


def _to_gt(setting, rows: list[dict], path: Path, n_trained: int) -> GroundTruth:
    keys = list(rows[0]["outputs"])
    return GroundTruth(
        setting=setting.name, key=path.name, masks=np.stack([r["mask"] for r in rows]),
        outputs=np.stack([r["outputs"]["loss"] for r in rows]),
        extras={k: np.stack([r["outputs"][k] for r in rows]) for k in keys if k != "loss"},
        seeds=np.array([r["seed"] for r in rows]), train_seconds=np.array([r["train_seconds"] for r in rows]),
        path=path, n_trained=n_trained)


# ------------------------------------------------------------------------------------- compute


def train_one(setting, ctx, m: int, device: str = "cpu", seed_offset: int = 0) -> dict:
    """Train ground-truth model m on its mask and measure every query of `ctx` (seed_offset != 0:
    the same mask with another seed, for the rerun diagnostic)."""
    mask = setting.mask(m)
    seed = setting.model_seed(m) + seed_offset
    from .settings import torch_threads

    with torch_threads(setting.train_threads):  # measured on the same thread count everywhere
        t0 = time.time()
        model = setting.train_subset(ctx, mask, seed, device)
        secs = time.time() - t0
        outs = setting.query_outputs(ctx, model, device)
    return {"model": m, "seed": seed, "train_seconds": secs, "mask": mask, "outputs": outs}


_WORKER: dict = {}


def _worker_init(setting, cache_dir, device, threads):
    import torch

    torch.set_num_threads(threads)
    _WORKER["setting"] = setting
    _WORKER["device"] = device
    _WORKER["ctx"] = setting.build_context(cache_dir, device=device, progress=False)


def _worker_train(m: int, seed_offset: int = 0) -> dict:
    return train_one(_WORKER["setting"], _WORKER["ctx"], m, _WORKER["device"], seed_offset)


def _map_models(setting, ctx, ms: list[int], device: str, workers: int, cache_dir, seed_offset: int = 0):
    """Yields train_one rows for models `ms` in order, in this process or a spawn pool."""
    if workers <= 1:
        for m in ms:
            yield train_one(setting, ctx, m, device, seed_offset)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                             initargs=(setting, str(cache_dir), device, threads)) as ex:
        yield from ex.map(_worker_train, ms, [seed_offset] * len(ms))


def compute_ground_truth(setting, cache_dir, n_models: int | None = None, ctx=None, device: str = "cpu",
                         progress: bool = True, workers: int = 1, save_every_s: float = 20.0) -> GroundTruth:
    """Build or reuse the ground truth for `setting` (n_models defaults to setting.n_models) over
    the setting's first `n_query` queries. `workers > 1` trains models in that many processes
    (each with cpu_count // workers torch threads; results are identical to workers=1 up to
    floating-point thread effects). Saves progress every `save_every_s` seconds (resumable)."""
    from tqdm.auto import tqdm

    M = int(n_models or setting.n_models)
    if M < 1:
        raise StrideError("the ground truth needs at least one model")
    if ctx is None:
        ctx = setting.build_context(cache_dir, device=device, progress=progress)
    key = setting.gt_key(ctx.fingerprint)
    path = gt_dir(cache_dir, setting, ctx.fingerprint)
    cached = _load(path, key)
    rows, meta = cached if cached else ([], None)
    if rows and meta["n_query"] < ctx.n_query:
        logger.info("cached ground truth has %d queries < %d requested: recomputing", meta["n_query"], ctx.n_query)
        rows = []
    if len(rows) >= M:
        return _to_gt(setting, rows[:M], path, 0).head(M, ctx.n_query)

    work_setting, work_ctx = setting, ctx
    if rows and meta["n_query"] > ctx.n_query:  # keep the cache's wider query set when extending it
        work_setting = replace(setting, n_query=int(meta["n_query"]))
        work_ctx = work_setting.build_context(cache_dir, device=device, progress=progress)
    meta = {"setting": setting.name, "key": key, "fields": work_setting.gt_fields(), "fingerprint": ctx.fingerprint,
            "n_train": ctx.n_train, "n_query": work_ctx.n_query}
    todo = list(range(len(rows), M))
    logger.info("ground truth %s: %d cached, training %d model(s) into %s", setting.name, len(rows), len(todo), path)
    bar = tqdm(total=len(todo), desc=f"ground truth {setting.name}", disable=not progress, mininterval=1.0)
    last_save = time.time()
    n_new = 0

    def take(row):
        nonlocal last_save, n_new
        rows.append(row)
        n_new += 1
        bar.update(1)
        bar.set_postfix(s_per_model=f"{row['train_seconds']:.1f}")
        if time.time() - last_save > save_every_s:
            _save(path, rows, meta)
            last_save = time.time()

    try:
        for row in _map_models(work_setting, work_ctx, todo, device, workers, cache_dir):
            take(row)
    finally:
        bar.close()
        if rows and n_new:
            _save(path, rows, meta)
    return _to_gt(setting, rows, path, n_new).head(M, ctx.n_query)


# ----------------------------------------------------------------------------------- diagnostics


RERUN_SEED_OFFSET = 10_000_000


def rerun_consistency(setting, ctx, gt: GroundTruth, n_masks: int = 20, device: str = "cpu",
                      progress: bool = True, workers: int = 1) -> dict:
    """How reproducible is the ground truth? Retrain models 0..n_masks-1 on the *same* masks with
    fresh seeds and correlate (Spearman over masks, per query) their outputs with the cached ones.

    `mean_rho` is a test-retest reliability of one ground-truth output; with per-model seeds no
    attribution can predict the seed noise, so LDS is capped well below 1 (roughly by
    sqrt(max(mean_rho, 0)) for a noiseless predictor). With same_init=True the rerun is identical."""
    from tqdm.auto import tqdm

    from .lds import spearman_columns

    n = min(n_masks, gt.n_models)
    if n < 3:
        raise StrideError("rerun consistency needs at least 3 ground-truth models")
    offset = 0 if setting.same_init else RERUN_SEED_OFFSET
    rows = _map_models(setting, ctx, list(range(n)), device, workers, ctx.cache_dir, offset)
    again = np.stack([r["outputs"]["loss"][:gt.n_query]
                      for r in tqdm(rows, total=n, desc="rerun (noise ceiling)", disable=not progress, mininterval=1.0)])
    rho = spearman_columns(gt.outputs[:n], again)
    centred = spearman_columns(gt.outputs[:n] - gt.outputs[:n].mean(1, keepdims=True),
                               again - again.mean(1, keepdims=True)) if gt.n_query > 1 else rho
    return {"n_masks": n, "mean_rho": float(rho.mean()), "mean_rho_query_specific": float(centred.mean()),
            "approx_lds_ceiling": float(np.sqrt(max(rho.mean(), 0.0))),
            "approx_qs_lds_ceiling": float(np.sqrt(max(centred.mean(), 0.0)))}
