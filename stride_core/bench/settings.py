"""Benchmark settings: data, model, training recipe and query output for each LDS setting.

A `Setting` is a frozen description (its fields key the caches); `Setting.build_context` loads the
data and the base model (trained on all `n_train` documents with `base_seed`, cached on disk) and
returns a context object that attribution methods read:

- `digits-mlp` -> `DigitsContext`: scikit-learn's bundled digits (no download), 1000 train / 100
  query images (seeded split), an MLP 64-128-128-10 (`fc1, act1, fc2, act2, fc3`); query output =
  cross-entropy of the true label (margin kept too).
- `tiny-lm` -> `LMContext`: `n_train` pydocs documents (seeded choice), a byte-level BPE trained on
  them, a small GPT-2 saved in Hugging Face format; queries are held-out pydocs documents split into
  a prompt (first ~40% of tokens) and a continuation; query output = mean token NLL of the
  continuation given `<eos> + prompt` (the exact definition is `lm_query_losses`).

Ground-truth models (see `ground_truth.py`) are trained with `Setting.train_subset` on a mask of the
training set and measured with `Setting.query_outputs`.
"""

from __future__ import annotations

import logging
from dataclasses import fields

from ..errors import StrideError

# re-exported: the harness, the methods and the tests take a setting's pieces from here
from .setting_base import BENCH_VERSION, BenchContext, Setting, torch_threads
from .setting_digits import DigitsContext, DigitsSetting, make_mlp, mlp_outputs, train_mlp
from .setting_lm import LMContext, TinyLMPaperSetting, TinyLMSetting, lm_query_losses, split_prompt

__all__ = ["BENCH_VERSION", "SETTINGS", "BenchContext", "DigitsContext", "DigitsSetting", "LMContext", "Setting", "TinyLMPaperSetting",
           "TinyLMSetting", "get_setting", "lm_query_losses", "make_mlp", "mlp_outputs", "split_prompt", "torch_threads", "train_mlp"]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ base


# ---------------------------------------------------------------------------------------- digits


# --------------------------------------------------------------------------------------- tiny-lm


# -------------------------------------------------------------------------------------- registry

SETTINGS: dict[str, type[Setting]] = {"digits-mlp": DigitsSetting, "tiny-lm": TinyLMSetting,
                                      "tiny-lm-paper": TinyLMPaperSetting}


def get_setting(name: str, **overrides) -> Setting:
    """A setting by name with field overrides (None values are ignored)."""
    if name not in SETTINGS:
        raise StrideError(f"unknown setting {name!r}: use one of {', '.join(SETTINGS)}")
    cls = SETTINGS[name]
    known = {f.name for f in fields(cls)}
    bad = [k for k, v in overrides.items() if v is not None and k not in known]
    if bad:
        raise StrideError(f"setting {name!r} has no field(s) {bad}; fields: {sorted(known)}")
    return cls(**{k: v for k, v in overrides.items() if v is not None})
