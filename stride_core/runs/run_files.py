"""Files of a run folder written so that an interrupted write is never mistaken for a finished one: a
temporary name renamed into place (atomic_save), arrays, and ranked tables as Parquet / JSONL / CSV.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError

logger = logging.getLogger(__name__)


def atomic_save(save_fn, path: Path):
    tmp = path.with_name(path.name + ".partial")
    save_fn(tmp)
    os.replace(tmp, path)


def save_npy(path: Path, a: np.ndarray):
    with open(path, "wb") as fh:  # a file object: np.save would append .npy to the temporary name
        np.save(fh, a)


def write_table(df: pd.DataFrame, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    suf = path.suffix.lower()
    if suf == ".parquet":
        atomic_save(lambda p: df.to_parquet(p, index=False), path)
    elif suf == ".jsonl":
        atomic_save(lambda p: df.to_json(p, orient="records", lines=True, force_ascii=False), path)
    elif suf == ".csv":
        atomic_save(lambda p: df.to_csv(p, index=False), path)
    else:
        raise InputError(f"{path}: use a .parquet, .jsonl or .csv file name")
