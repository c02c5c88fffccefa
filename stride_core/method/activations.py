"""Activation cache: one forward pass over the documents, stored as memory-mapped files.

Layout of a cache folder:
  meta.json            N, total tokens, D, C, dtype, layer, finished flag
  doc_ids.npy          (N,)   int64  document ids, in cache order
  offsets.npy          (N+1,) int64  document i owns token rows [offsets[i], offsets[i+1])
  h.bin / z.bin        (Ttot, D) / (Ttot, C) fp16 memmaps: layer activations / base-output features
  target.npy weight.npy(Ttot,) next-token ids (or labels) and loss weights
  done.bin             (N,) uint8 memmap: per-document done mask, flushed after each batch

An interrupted pass resumes where it stopped (done mask); documents larger than RAM stream because
only one batch is ever in memory.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import RunError, StrideError
from .storage import load_npy, open_memmap, read_json, rebuild_hint

logger = logging.getLogger(__name__)

_DTYPES = {"float16": np.float16, "float32": np.float32}


@dataclass
class FeatureCache:
    """Token-level features of N documents (memmapped, read-only once finished)."""

    root: Path
    doc_ids: np.ndarray  # (N,)
    offsets: np.ndarray  # (N+1,)
    h: np.ndarray  # (Ttot, D)
    z: np.ndarray  # (Ttot, C)
    target: np.ndarray  # (Ttot,)
    weight: np.ndarray  # (Ttot,)

    @property
    def n_docs(self) -> int:
        return len(self.doc_ids)

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def doc_of_token(self) -> np.ndarray:
        """(Ttot,) document index of each token row."""
        return np.repeat(np.arange(self.n_docs), self.lengths)

    def rows(self, idx: np.ndarray, device="cpu", dtype=torch.float32) -> dict:
        """Gather token rows -> tensors h (n, D), z (n, C), target (n,), weight (n,)."""
        idx = np.asarray(idx)
        return {
            "h": torch.from_numpy(np.asarray(self.h[idx], dtype=np.float32)).to(device, dtype),
            "z": torch.from_numpy(np.asarray(self.z[idx], dtype=np.float32)).to(device, dtype),
            "target": torch.from_numpy(np.asarray(self.target[idx])).to(device),
            "weight": torch.from_numpy(np.asarray(self.weight[idx], dtype=np.float32)).to(device),
        }

    def doc_rows(self, i: int, device="cpu") -> dict:
        return self.rows(np.arange(self.offsets[i], self.offsets[i + 1]), device)

    def check_doc_ids(self, doc_ids: Sequence[int]):
        if len(doc_ids) != self.n_docs or not np.array_equal(np.asarray(doc_ids), self.doc_ids):
            raise RunError(f"the activation cache in {self.root} was computed for other documents; re-run with --overwrite")

    @classmethod
    def open(cls, root: Path) -> "FeatureCache":
        root = Path(root)
        meta_path = root / "meta.json"
        if not meta_path.exists():
            raise RunError(f"no activation cache in {root}")
        meta = read_json(meta_path, root)
        if not meta.get("finished"):
            raise RunError(f"the activation cache in {root} is incomplete; re-run `stride index` to resume it")
        dt = _DTYPES[meta["dtype"]]
        T, N = meta["n_tokens"], meta["n_docs"]
        # Every file is checked against meta.json, so a truncated one is named instead of failing later.
        doc_ids, offsets = load_npy(root / "doc_ids.npy", root), load_npy(root / "offsets.npy", root)
        target, weight = load_npy(root / "target.npy", root, mmap_mode="r"), load_npy(root / "weight.npy", root, mmap_mode="r")
        for name, arr, n in (("doc_ids.npy", doc_ids, N), ("offsets.npy", offsets, N + 1), ("target.npy", target, T),
                             ("weight.npy", weight, T)):
            if arr.shape != (n,):
                raise RunError(f"{root / name} is damaged (shape {arr.shape}, expected ({n},)): {rebuild_hint(root)}")
        return cls(
            root=root,
            doc_ids=doc_ids,
            offsets=offsets,
            h=open_memmap(root / "h.bin", dt, "r", (T, meta["D"]), root),
            z=open_memmap(root / "z.bin", dt, "r", (T, meta["C"]), root),
            target=target,
            weight=weight,
        )


def build_cache(
    root: Path,
    task,
    items: Sequence,
    lengths: Sequence[int],
    doc_ids: Sequence[int],
    batch_size: int = 16,
    dtype: str = "float16",
    progress: bool = True,
    on_progress: Callable[[float], None] | None = None,
) -> FeatureCache:
    """Run task.features over `items` (batches of `batch_size`) and store them under `root`.

    `lengths[i]` is the number of token rows item i produces (known before the forward pass, so the
    memmaps are preallocated). Resumes from the done mask when `root` holds a compatible partial cache.
    `items` only needs `__getitem__` and `len` (e.g. a lazy view of a token store).
    One process: prepare_cache + fill_cache over every document + finish_cache; several processes
    (stride_core.runs.distributed) call the three steps themselves, each filling its own documents.
    """
    if prepare_cache(root, task, items, lengths, doc_ids, dtype):
        return FeatureCache.open(root)
    fill_cache(root, task, items, batch_size=batch_size, progress=progress, on_progress=on_progress)
    return finish_cache(root)


def prepare_cache(root: Path, task, items: Sequence, lengths: Sequence[int], doc_ids: Sequence[int],
                  dtype: str = "float16") -> bool:
    """Create (or validate for resuming) the cache files under `root`; True when the cache is already
    finished. Only one process may call this for a given root (the others wait for it)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    N = len(items)
    lengths = np.asarray(lengths, dtype=np.int64)
    if N == 0:
        raise StrideError("no documents to cache")
    if len(lengths) != N or len(doc_ids) != N:
        raise StrideError(f"{N} items but {len(lengths)} lengths and {len(doc_ids)} document ids")
    if (lengths <= 0).any():
        bad = np.asarray(doc_ids)[lengths <= 0][:5].tolist()
        raise StrideError(f"documents {bad} have no tokens")
    if dtype not in _DTYPES:
        raise StrideError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    T = int(offsets[-1])
    meta = {"n_docs": N, "n_tokens": T, "D": int(task.hidden_dim if hasattr(task, "hidden_dim") else 0),
            "C": int(task.out_dim), "dtype": dtype, "layer": task.layer, "finished": False}
    dt = _DTYPES[dtype]
    meta_path = root / "meta.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        same = (old.get("n_docs"), old.get("n_tokens"), old.get("layer"), old.get("dtype")) == (N, T, task.layer, dtype)
        if same and np.array_equal(np.load(root / "doc_ids.npy"), np.asarray(doc_ids)):
            return bool(old.get("finished"))
    # Probe D from one item so the memmaps can be sized.
    probe = task.features([items[0]])[0]
    meta["D"] = int(probe["h"].shape[1])
    meta["C"] = int(probe["z"].shape[1])
    np.save(root / "doc_ids.npy", np.asarray(doc_ids, dtype=np.int64))
    np.save(root / "offsets.npy", offsets)
    for name, shape, d in (("h.bin", (T, meta["D"]), dt), ("z.bin", (T, meta["C"]), dt)):
        np.memmap(root / name, dtype=d, mode="w+", shape=shape).flush()
    np.save(root / "target.npy", np.zeros(T, dtype=np.int64))
    np.save(root / "weight.npy", np.zeros(T, dtype=np.float32))
    np.memmap(root / "done.bin", dtype=np.uint8, mode="w+", shape=(N,)).flush()
    meta_path.write_text(json.dumps(meta))
    return False


def fill_cache(root: Path, task, items: Sequence, docs: np.ndarray | None = None, batch_size: int = 16,
               progress: bool = True, on_progress: Callable[[float], None] | None = None) -> int:
    """Forward the not-yet-done documents among `docs` (indices into items; None = all) and write their
    token rows into the prepared memmaps. Processes given disjoint `docs` write disjoint rows, so they
    can fill one cache at the same time. Returns the number of documents computed."""
    root = Path(root)
    meta = read_json(root / "meta.json", root)
    N, T, dt = meta["n_docs"], meta["n_tokens"], _DTYPES[meta["dtype"]]
    offsets = load_npy(root / "offsets.npy", root)
    lengths = np.diff(offsets)
    ids_arr = load_npy(root / "doc_ids.npy", root)
    h = open_memmap(root / "h.bin", dt, "r+", (T, meta["D"]), root)
    z = open_memmap(root / "z.bin", dt, "r+", (T, meta["C"]), root)
    target = load_npy(root / "target.npy", root, mmap_mode="r+")
    weight = load_npy(root / "weight.npy", root, mmap_mode="r+")
    done = open_memmap(root / "done.bin", np.uint8, "r+", (N,), root)
    mine = np.arange(N) if docs is None else np.asarray(docs, dtype=np.int64)
    todo = mine[done[mine] == 0]
    # Sort remaining documents by length so padded batches waste little compute.
    todo = todo[np.argsort(lengths[todo], kind="stable")]
    if len(todo) < len(mine):
        logger.info("resuming activation cache: %d of %d documents left", len(todo), len(mine))
    bar = tqdm(total=len(todo), desc="cache activations", disable=not progress, mininterval=1.0)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        feats = task.features([items[i] for i in chunk])
        for i, f in zip(chunk, feats):
            a, b = offsets[i], offsets[i + 1]
            if f["h"].shape[0] != b - a:
                raise StrideError(f"document {ids_arr[i]} produced {f['h'].shape[0]} token rows, expected {b - a}")
            if not (torch.isfinite(f["h"]).all() and torch.isfinite(f["z"]).all()):
                raise StrideError(f"NaN or inf in the activations of document {ids_arr[i]}: check the model weights and dtype")
            h[a:b] = f["h"].numpy().astype(dt)
            z[a:b] = f["z"].numpy().astype(dt)
            target[a:b] = f["target"].numpy()
            weight[a:b] = f["weight"].numpy()
        h.flush(); z.flush(); target.flush(); weight.flush()
        done[chunk] = 1
        done.flush()
        bar.update(len(chunk))
        if on_progress:
            on_progress(float((done == 1).mean()))
    bar.close()
    return len(todo)


def finish_cache(root: Path) -> FeatureCache:
    """Mark a filled cache finished (raises when a document is still missing) and open it."""
    root = Path(root)
    meta_path = root / "meta.json"
    meta = read_json(meta_path, root)
    done = open_memmap(root / "done.bin", np.uint8, "r", (meta["n_docs"],), root)
    missing = np.flatnonzero(done == 0)
    if len(missing):
        ids = np.load(root / "doc_ids.npy")[missing[:5]].tolist()
        raise RunError(f"the activation cache in {root} is missing {len(missing)} documents (e.g. {ids}); re-run to resume it")
    meta["finished"] = True
    meta_path.write_text(json.dumps(meta))
    return FeatureCache.open(root)


def features_in_memory(task, items: Sequence, batch_size: int = 16) -> FeatureCache:
    """Same structure as a cache, held in RAM (queries at attribution time)."""
    feats = []
    for s in range(0, len(items), batch_size):
        feats.extend(task.features(list(items[s:s + batch_size])))
    lengths = np.array([f["h"].shape[0] for f in feats], dtype=np.int64)
    for i, f in enumerate(feats):
        if not (torch.isfinite(f["h"]).all() and torch.isfinite(f["z"]).all()):
            raise StrideError(f"NaN or inf in the activations of query {i}")
    cat = lambda k: torch.cat([f[k] for f in feats]).numpy()  # noqa: E731
    return FeatureCache(root=Path("."), doc_ids=np.arange(len(feats)), offsets=np.concatenate([[0], np.cumsum(lengths)]),
                        h=cat("h"), z=cat("z"), target=cat("target"), weight=cat("weight"))
