"""Checked opening of a run's binary files (activation cache, token store).

A file cut short (a full disk, a copy interrupted, a kill during a write) would otherwise surface as
numpy's `mmap length is greater than file size`; here it is a RunError that names the file and the
command that rebuilds it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import RunError


def rebuild_hint(folder: Path) -> str:
    """How to rebuild `folder` (runs/<run>/cache or runs/<run>/tokens): delete it and index again."""
    folder = Path(folder)
    run = folder.parent.name if folder.name in ("cache", "tokens") else "RUN"
    return (f"delete the folder {folder} and re-run `stride index --run {run} ...` with the run's arguments to rebuild "
            f"it (or re-run `stride index --run {run} ... --overwrite` to rebuild the whole run)")


def _damaged(path: Path, detail: str, folder: Path) -> RunError:
    return RunError(f"{path} is damaged ({detail}): {rebuild_hint(folder)}")


def open_memmap(path: Path, dtype, mode: str, shape: tuple, folder: Path) -> np.memmap:
    """np.memmap of `path`, after checking that the file holds exactly `shape` items of `dtype`."""
    path = Path(path)
    want = int(np.prod(shape)) * np.dtype(dtype).itemsize
    try:
        got = path.stat().st_size
    except FileNotFoundError:
        raise _damaged(path, "missing", folder) from None
    if got != want:
        raise _damaged(path, f"{got} bytes, expected {want}", folder)
    return np.memmap(path, dtype=dtype, mode=mode, shape=shape)


def load_npy(path: Path, folder: Path, **kwargs) -> np.ndarray:
    """np.load of a .npy file, a damaged or missing one raising a RunError that names it."""
    try:
        return np.load(path, **kwargs)
    except FileNotFoundError:
        raise _damaged(Path(path), "missing", folder) from None
    except (OSError, ValueError, EOFError) as exc:  # truncated or not a .npy file
        raise _damaged(Path(path), str(exc), folder) from None


def read_json(path: Path, folder: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise _damaged(Path(path), str(exc), folder) from None
