"""STRIDE with a propagated operator (PAPER.md D2 (a), the paper's method figure), for the LM settings.

The change a_k B(h_l) is added to the output of decoder block l at every position, and the frozen blocks
above l, the final norm and the head run on it (attention mixes the change across positions) before the
logits. The product's operators act on the final normed hidden state or on the logits instead
(`OperatorArgs.space`), which a feature cache of single tokens can serve; this one needs whole
sequences, so it is benchmark-only: no feature cache, every training step and every measurement is a
forward pass of token ids through the model with a hook at block l, batched over subsets (row b of a
batch is steered by subset k[b]).

Same subset design, losses (token NLL on members' tokens, KL to the base model on other documents),
recovery (1-SE Lasso per design) and design averaging as the bench's "stride"."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager

import numpy as np

logger = logging.getLogger(__name__)

# torch is imported inside the functions: the CLI imports the method registry at start-up.


def _operators(D: int, K: int, R: int):
    import torch

    class PropagatedOperators(torch.nn.Module):
        """Basis B (LayerNorm without affine, then D -> R) shared by all subsets; a_k (R x D) per subset."""

        def __init__(self):
            super().__init__()
            self.norm = torch.nn.LayerNorm(D, elementwise_affine=False)
            self.basis = torch.nn.Linear(D, R)
            self.A = torch.nn.Parameter(torch.zeros(K, R, D))  # zero = unsteered at init

        def delta(self, h, k):  # h (B, T, D), k (B,) -> (B, T, D)
            return torch.bmm(self.basis(self.norm(h)), self.A[k])

    return PropagatedOperators()


@contextmanager
def _steering(layer_module, ops):
    """While active, `state["k"]` (B,) (or None: unsteered) selects each batch row's subset."""
    state = {"k": None}

    def hook(module, inputs, out):
        if state["k"] is None:
            return None
        h = out[0] if isinstance(out, tuple) else out
        h2 = h + ops.delta(h, state["k"])
        return (h2, *out[1:]) if isinstance(out, tuple) else h2

    handle = layer_module.register_forward_hook(hook)
    try:
        yield state
    finally:
        handle.remove()


def _batch(seqs: list[list[int]], pad: int):
    """Right-padded (B, L) input ids, attention mask and a (B, L-1) validity mask of the targets."""
    import torch

    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return ids, mask, mask[:, 1:].bool()


def train_propagated(model, layer_module, docs: list[list[int]], design, R: int = 64, steps: int = 300,
                     subset_batch: int = 200, lr: float = 3e-3, stability_weight: float = 1.0, seed: int = 0, pad: int = 0):
    """docs[i]: input ids of training document i (the first is the BOS/EOS token). Returns the operators."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    ops = _operators(model.config.hidden_size, design.K, R)
    opt = torch.optim.AdamW(ops.parameters(), lr=lr, weight_decay=0.0)
    indptr, members = (torch.from_numpy(a) for a in design.csr())
    sizes = indptr[1:] - indptr[:-1]
    Kb = min(subset_batch, design.K)
    perm = torch.randperm(design.K, generator=g)
    with _steering(layer_module, ops) as state:
        for step in range(steps):
            s = (step * Kb) % design.K
            k = perm[s:s + Kb]
            if len(k) < Kb:
                k = torch.cat([k, perm[:Kb - len(k)]])
            fid_docs = members[indptr[k] + (torch.rand(Kb, generator=g) * sizes[k]).long()]  # one member each
            ids, mask, valid = _batch([docs[int(d)] for d in fid_docs], pad)
            state["k"] = k
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
            fid = F.cross_entropy(logits[valid], ids[:, 1:][valid])
            loss = fid
            if stability_weight > 0:
                any_docs = torch.randint(0, design.N, (Kb,), generator=g)
                ids, mask, valid = _batch([docs[int(d)] for d in any_docs], pad)
                state["k"] = None
                with torch.no_grad():
                    base = F.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1][valid].float(), -1)
                state["k"] = k
                steered = F.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1][valid].float(), -1)
                loss = loss + stability_weight * (base.exp() * (base - steered)).sum(-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % 50 == 0 or step == steps - 1:
                logger.info("propagated operators step %d/%d: fidelity %.4f, total %.4f", step + 1, steps, fid.item(), loss.item())
    return ops.eval()


def measure_propagated(model, layer_module, ops, queries: list[tuple[list[int], int]], K: int,
                       subset_chunk: int = 200) -> np.ndarray:
    """queries[q] = (input ids with the BOS first, n_prompt: leading targets not counted). y (Q, K) =
    base loss - steered loss, the loss being the mean NLL of the counted targets."""
    import torch
    import torch.nn.functional as F

    y = np.zeros((len(queries), K), dtype=np.float32)
    with torch.no_grad(), _steering(layer_module, ops) as state:
        for qi, (seq, n_prompt) in enumerate(queries):
            ids = torch.tensor([seq])
            w = torch.ones(len(seq) - 1)
            w[:n_prompt] = 0
            t = ids[0, 1:]
            state["k"] = None
            base = (F.cross_entropy(model(input_ids=ids).logits[0, :-1].float(), t, reduction="none") * w).sum() / w.sum()
            for k0 in range(0, K, subset_chunk):
                ks = torch.arange(k0, min(K, k0 + subset_chunk))
                state["k"] = ks
                logits = model(input_ids=ids.expand(len(ks), -1)).logits[:, :-1].float()  # (Kc, T, V)
                tok = F.cross_entropy(logits.reshape(-1, logits.size(-1)), t.repeat(len(ks)), reduction="none").view(len(ks), -1)
                y[qi, k0:k0 + len(ks)] = (base - (tok * w).sum(1) / w.sum()).numpy()
    return y


def stride_propagated(ctx, K: int = 600, S: int = 5, designs: int = 3, R: int = 64, steps: int = 300, layer: str | None = None):
    """The bench method: ((Q, N) scores, timing) on an LMContext."""
    from ..errors import StrideError
    from ..method.recovery import LassoRecovery
    from ..method.subsets import SubsetDesign
    from ..method.tasks import decoder_blocks, find_module

    if not hasattr(ctx, "train_token_ids"):
        raise StrideError("stride-propagated steers a decoder block of a language model: use an LM setting (tiny-lm, tiny-lm-paper)")
    model = ctx.load_model().float().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    prefix, n = decoder_blocks(model)
    layer = layer or f"{prefix}.{n // 2}"  # the bench's "stride" reads the same block
    block = find_module(model, layer)
    eos = ctx.eos_id
    t0 = time.perf_counter()
    docs = [[eos, *list(ids)[:ctx.block_size]] for ids in ctx.train_token_ids]  # the first block_size tokens, as "stride"
    design = SubsetDesign.stacked(np.arange(ctx.n_train), K, S, 0, designs)
    fitted = []
    for e, d in enumerate(design.split(designs)):
        fitted.append((d, train_propagated(model, block, docs, d, R=R, steps=steps, seed=e, pad=eos)))
    fit_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    queries = [([eos, *p, *c], len(p)) for p, c in zip(ctx.query_prompt_ids, ctx.query_cont_ids)]
    scores = []
    for d, ops in fitted:
        y = measure_propagated(model, block, ops, queries, d.K)
        scores.append(LassoRecovery(rule="1se").fit(d, y).influence_)
    return np.mean(scores, axis=0), {"fit_seconds": fit_s, "query_seconds": time.perf_counter() - t1, "layer": layer}
