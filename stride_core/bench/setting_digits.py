"""`digits-mlp`: scikit-learn's bundled digits, an MLP, its training recipe and its query outputs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import StrideError
from .setting_base import BenchContext, Setting, _hash, torch_threads

logger = logging.getLogger(__name__)

# Bump when the meaning of a cached model or ground-truth output changes (invalidates caches).

def make_mlp(hidden: tuple[int, ...] = (128, 128), n_in: int = 64, n_out: int = 10):
    """nn.Sequential with named modules fc1, act1, fc2, act2, ..., fc{L+1} (logits)."""
    import torch.nn as nn

    layers, d = OrderedDict(), n_in
    for i, h in enumerate(hidden, start=1):
        layers[f"fc{i}"] = nn.Linear(d, h)
        layers[f"act{i}"] = nn.ReLU()
        d = h
    layers[f"fc{len(hidden) + 1}"] = nn.Linear(d, n_out)
    return nn.Sequential(layers)


def train_mlp(X: np.ndarray, y: np.ndarray, seed: int, epochs: int = 30, batch_size: int = 64, lr: float = 1e-3,
              weight_decay: float = 0.0, hidden: tuple[int, ...] = (128, 128), device: str = "cpu"):
    """Minibatch Adam on (X, y); deterministic given `seed` (init and batch order use their own
    generators; the global torch RNG is left untouched). Returns the model in eval mode."""
    import torch
    import torch.nn.functional as F

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make_mlp(tuple(hidden), X.shape[1], 10)
    model.to(device)
    Xt = torch.as_tensor(X, dtype=torch.float32, device=device)
    yt = torch.as_tensor(y, dtype=torch.long, device=device)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    n = len(Xt)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g).to(device)
        for j in range(0, n, batch_size):
            b = perm[j:j + batch_size]
            loss = F.cross_entropy(model(Xt[b]), yt[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


def mlp_outputs(model, X: np.ndarray, y: np.ndarray, device: str = "cpu") -> dict[str, np.ndarray]:
    """Per-example cross-entropy loss of the true label and margin (true logit - best other logit)."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        logits = model(torch.as_tensor(X, dtype=torch.float32, device=device)).double()
        yt = torch.as_tensor(y, dtype=torch.long, device=device)
        loss = F.cross_entropy(logits, yt, reduction="none")
        true = logits.gather(1, yt[:, None])[:, 0]
        other = logits.scatter(1, yt[:, None], float("-inf")).max(1).values
    return {"loss": loss.cpu().numpy(), "margin": (true - other).cpu().numpy(),
            "correct": (logits.argmax(1) == yt).cpu().numpy().astype(np.float64)}


@dataclass
class DigitsContext(BenchContext):
    """Context for `digits-mlp`. `model` is the base MLP (eval mode, on `device`), trained on all
    of X_train with the setting's base_seed. Features are pixel values / 16 (float32)."""

    model: object = None
    X_train: np.ndarray = None  # (N, 64)
    y_train: np.ndarray = None  # (N,)
    X_query: np.ndarray = None  # (Q, 64)
    y_query: np.ndarray = None  # (Q,)
    X_val: np.ndarray = None  # remaining images (base-model fit report only)
    y_val: np.ndarray = None
    query_ids: np.ndarray = None  # (Q,) row indices into load_digits()

    @property
    def n_query(self) -> int:
        return len(self.y_query)

    def query_outputs(self, model=None) -> dict[str, np.ndarray]:
        return mlp_outputs(model if model is not None else self.model, self.X_query, self.y_query, self.device)


@dataclass(frozen=True)
class DigitsSetting(Setting):
    name: str = "digits-mlp"
    n_train: int = 1000
    n_query: int = 100
    n_models: int = 100
    split_seed: int = 0
    hidden: tuple = (128, 128)
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if self.n_train + self.n_query > 1797:
            raise StrideError("digits has 1797 images: n_train + n_query must be <= 1797")

    def load_split(self) -> dict:
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
        X = (X / 16.0).astype(np.float32)
        y = y.astype(np.int64)
        perm = np.random.default_rng(self.split_seed).permutation(len(X))
        tr, q, va = perm[:self.n_train], perm[self.n_train:self.n_train + self.n_query], perm[self.n_train + self.n_query:]
        fp = _hash({"X": hashlib.sha256(X.tobytes()).hexdigest(), "y": hashlib.sha256(y.tobytes()).hexdigest(),
                    "tr": tr.tolist()})
        return {"X_train": X[tr], "y_train": y[tr], "X_query": X[q], "y_query": y[q], "X_val": X[va], "y_val": y[va],
                "train_ids": tr, "query_ids": q, "fingerprint": fp}

    def _train(self, X, y, seed, device):
        with torch_threads(self.train_threads):
            return train_mlp(X, y, seed, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                             weight_decay=self.weight_decay, hidden=self.hidden, device=device)

    def build_context(self, cache_dir, device: str = "cpu", progress: bool = True) -> DigitsContext:
        from safetensors.torch import load_file, save_file

        d = self.load_split()
        bdir = self.base_dir(cache_dir)
        wpath = bdir / "model.safetensors"
        if wpath.exists():
            model = make_mlp(self.hidden)
            model.load_state_dict(load_file(str(wpath)))
            model.to(device).eval()
            seconds = json.loads((bdir / "base.json").read_text())["train_seconds"]
        else:
            t0 = time.time()
            model = self._train(d["X_train"], d["y_train"], self.base_seed, device)
            seconds = time.time() - t0
            bdir.mkdir(parents=True, exist_ok=True)
            save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(wpath))
            (bdir / "base.json").write_text(json.dumps({"train_seconds": seconds, "setting": self.base_fields()}, indent=1))
        tr = mlp_outputs(model, d["X_train"], d["y_train"], device)
        va = mlp_outputs(model, d["X_val"], d["y_val"], device)
        metrics = {"train_acc": float(tr["correct"].mean()), "train_loss": float(tr["loss"].mean()),
                   "val_acc": float(va["correct"].mean()), "val_loss": float(va["loss"].mean()),
                   "n_val": int(len(d["y_val"])), "train_seconds": seconds,
                   "n_params": int(sum(p.numel() for p in model.parameters()))}
        ctx = DigitsContext(setting=self, cache_dir=Path(cache_dir), device=device, train_ids=d["train_ids"],
                            fingerprint=d["fingerprint"], model=model, X_train=d["X_train"], y_train=d["y_train"],
                            X_query=d["X_query"], y_query=d["y_query"], X_val=d["X_val"], y_val=d["y_val"],
                            query_ids=d["query_ids"])
        q = ctx.query_outputs()
        ctx.base_metrics = {**metrics, "query_acc": float(q["correct"].mean()), "query_loss": float(q["loss"].mean()),
                            "n_query": ctx.n_query}
        return ctx

    def train_subset(self, ctx: DigitsContext, mask: np.ndarray, seed: int, device: str = "cpu"):
        return self._train(ctx.X_train[mask], ctx.y_train[mask], seed, device)

    def query_outputs(self, ctx: DigitsContext, model, device: str = "cpu") -> dict[str, np.ndarray]:
        o = mlp_outputs(model, ctx.X_query, ctx.y_query, device)
        return {"loss": o["loss"], "margin": o["margin"]}
