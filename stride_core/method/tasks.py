"""Tasks: what a model's "documents" are, where STRIDE steers, and how the output loss is computed.

A task turns a batch of documents into token-level features:
- h: (T, D) activations at the steered layer (the basis B_psi reads these),
- z: (T, C) what rebuilds the base output: for a causal LM the final normed hidden state
  (logits = head(z) = z @ W_U^T, never stored as T x V), for a classifier the logits themselves,
- target: (T,) next-token id or class label, weight: (T,) loss weight (0 = not counted).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from ..errors import StrideError

logger = logging.getLogger(__name__)


@contextmanager
def capture_output(module: torch.nn.Module, store: dict, key: str = "h"):
    """Forward hook recording a module's output (first element of tuples); always removed."""

    def hook(_mod, _inp, out):
        store[key] = out[0] if isinstance(out, (tuple, list)) else out

    handle = module.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def find_module(model: torch.nn.Module, name: str) -> torch.nn.Module:
    modules = dict(model.named_modules())
    if name not in modules:
        blocks = [n for n in modules if n.count(".") <= 3 and n.split(".")[-1].isdigit()][:6]
        raise StrideError(f"the model has no module named {name!r}; decoder blocks look like: {blocks}")
    return modules[name]


def decoder_blocks(model: torch.nn.Module) -> tuple[str, int]:
    """Prefix of the decoder-block ModuleList (e.g. 'transformer.h', 'model.layers') and its length."""
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    best = None
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) > 0:
            if n_layers is None or len(mod) == n_layers:
                if best is None or len(mod) > best[1]:
                    best = (name, len(mod))
    if best is None:
        raise StrideError("could not find the decoder blocks: pass --layer with a module name")
    return best


class Task:
    """Base class. Subclasses implement `features` and `head`."""

    model: torch.nn.Module
    layer: str

    def features(self, batch) -> list[dict]:
        raise NotImplementedError

    def head(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def out_dim(self) -> int:  # C
        raise NotImplementedError

    @staticmethod
    def token_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-token cross-entropy; logits (..., V), target (...) -> (...)."""
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), target.reshape(-1), reduction="none").view(target.shape)


class CausalLMTask(Task):
    """Next-token loss of a Hugging Face causal LM. A document is a token sequence; a query may count
    only its continuation tokens (weight 0 on the prompt)."""

    def __init__(self, model, tokenizer, layer: str | None = None, max_tokens: int = 256):
        self.model = model
        self.tokenizer = tokenizer
        prefix, n = decoder_blocks(model)
        self.layer = layer or f"{prefix}.{n // 2}"
        self.layer_module = find_module(model, self.layer)
        ctx = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None) or 1024
        if max_tokens + 1 > ctx:
            raise StrideError(f"max_tokens={max_tokens} exceeds the model's context ({ctx})")
        self.max_tokens = max_tokens
        self.context = ctx
        self.bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        self.unembed = model.get_output_embeddings()

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def hidden_dim(self) -> int:
        return self.model.config.hidden_size

    @property
    def out_dim(self) -> int:
        return self.model.config.hidden_size

    def head(self, z: torch.Tensor) -> torch.Tensor:
        return self.unembed(z.to(self.unembed.weight.dtype))

    def encode(self, text: str, prompt_len_chars: int | None = None) -> tuple[list[int], int]:
        """Token ids (truncated to max_tokens) and the number of leading ids that are prompt (weight 0)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        n_prompt = 0
        if prompt_len_chars is not None:
            n_prompt = len(self.tokenizer(text[:prompt_len_chars], add_special_tokens=False)["input_ids"])
        return ids[: self.max_tokens], min(n_prompt, self.max_tokens)

    @torch.no_grad()
    def features(self, batch: list[tuple[list[int], int]]) -> list[dict]:
        """batch: list of (ids, n_prompt). Returns per-document dicts of CPU tensors h, z, target, weight."""
        dev = self.device
        seqs = [[self.bos, *ids] for ids, _ in batch]
        L = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), L), self.bos, dtype=torch.long)
        mask = torch.zeros((len(seqs), L), dtype=torch.long)
        for i, s in enumerate(seqs):
            input_ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        store: dict = {}
        with capture_output(self.layer_module, store):
            out = self.model.base_model(input_ids=input_ids.to(dev), attention_mask=mask.to(dev))
        z_all = out.last_hidden_state  # (B, L, C) final normed hidden state
        h_all = store["h"]  # (B, L, D)
        res = []
        for i, (ids, n_prompt) in enumerate(batch):
            T = len(ids)  # positions 0..T-1 predict ids[0..T-1]
            w = torch.ones(T)
            w[:n_prompt] = 0.0
            res.append({"h": h_all[i, :T].float().cpu(), "z": z_all[i, :T].float().cpu(),
                        "target": torch.tensor(ids, dtype=torch.long), "weight": w})
        return res


class ClassifierTask(Task):
    """Cross-entropy of a plain torch classifier (e.g. an MLP). A document is one example: T = 1.
    `layer` names the module whose output is h; z is the model's logits (head = identity)."""

    def __init__(self, model: torch.nn.Module, layer: str, n_classes: int):
        self.model = model
        self.layer = layer
        self.layer_module = find_module(model, layer)
        self.n_classes = n_classes

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def out_dim(self) -> int:
        return self.n_classes

    def head(self, z: torch.Tensor) -> torch.Tensor:
        return z

    @torch.no_grad()
    def features(self, batch: list[tuple[torch.Tensor, int]]) -> list[dict]:
        x = torch.stack([b[0] for b in batch]).to(self.device).float()
        store: dict = {}
        with capture_output(self.layer_module, store):
            logits = self.model(x)
        h = store["h"].reshape(len(batch), -1)
        return [{"h": h[i:i + 1].float().cpu(), "z": logits[i:i + 1].float().cpu(),
                 "target": torch.tensor([int(batch[i][1])]), "weight": torch.ones(1)} for i in range(len(batch))]
