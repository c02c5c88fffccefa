"""Baseline attribution methods. Each is `method(ctx) -> (scores, timing)`:

- scores: (Q, N) float array; positive = including the training document *helps* the query
  (lowers its loss);
- timing: {"fit_seconds": index / training-side work, "query_seconds": query-side work + scoring}.

Methods (both settings unless noted):
- `random`: seeded standard normal scores (LDS ~ 0 by construction; a sanity floor).
- `generic`: a query-independent score, the same row for every query. tiny-lm: document length in
  tokens (longer documents = more training signal; the known subset-size effect). digits: the
  negated training loss of each image under the base model (well-fit, typical images help;
  hard or atypical ones less or hurt). Reported so that LDS can be read against a score that knows
  nothing about the query.
- `tfidf`: tiny-lm: TF-IDF cosine (scikit-learn, sublinear tf) between the full query text (prompt +
  continuation) and each training document. digits: raw pixel cosine, the analog.
- `repsim`: cosine of representations. tiny-lm: mean-pooled hidden states after block n_layer // 2
  (the middle), over all tokens of the document (block-size windows) / the query. digits: the
  penultimate activations (`act2`).
- `graddot`: TracIn-style dot product of loss gradients at the final checkpoint, all parameters:
  score = g_query . g_train (a gradient step on the training document changes the query loss by
  about -lr * score, so positive = helps). tiny-lm: the training loss is the document's mean token
  NLL (block-size windows after <eos>), the query loss the continuation NLL; train gradients are
  streamed (one backward per document, dotted with the Q query gradients, never stored).
"""

from __future__ import annotations

import time

import numpy as np

from ..errors import StrideError
from .settings import DigitsContext, LMContext


def _timing(fit: float, query: float, **extra) -> dict:
    return {"fit_seconds": float(fit), "query_seconds": float(query), **extra}


def _cosine(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    A = A / np.maximum(np.linalg.norm(A, axis=1, keepdims=True), 1e-12)
    B = B / np.maximum(np.linalg.norm(B, axis=1, keepdims=True), 1e-12)
    return A @ B.T


def _kind(ctx) -> str:
    if isinstance(ctx, DigitsContext):
        return "digits"
    if isinstance(ctx, LMContext):
        return "lm"
    raise StrideError(f"no baseline implementation for context type {type(ctx).__name__}")


# ---------------------------------------------------------------------------------------- random


def random_scores(ctx, seed: int = 0):
    t0 = time.perf_counter()
    s = np.random.default_rng(seed).standard_normal((ctx.n_query, ctx.n_train))
    return s, _timing(0.0, time.perf_counter() - t0)


# --------------------------------------------------------------------------------------- generic


def generic_scores(ctx):
    t0 = time.perf_counter()
    if _kind(ctx) == "lm":
        row = np.array([len(ids) for ids in ctx.train_token_ids], dtype=np.float64)
    else:
        from .settings import mlp_outputs

        row = -mlp_outputs(ctx.model, ctx.X_train, ctx.y_train, ctx.device)["loss"]
    t1 = time.perf_counter()
    s = np.repeat(row[None, :], ctx.n_query, axis=0)
    return s, _timing(t1 - t0, time.perf_counter() - t1)


# ----------------------------------------------------------------------------------------- tfidf


def _tfidf_text(train_texts: list[str], query_texts: list[str]):
    from sklearn.feature_extraction.text import TfidfVectorizer

    t0 = time.perf_counter()
    vec = TfidfVectorizer(sublinear_tf=True)
    Xt = vec.fit_transform(train_texts)
    t1 = time.perf_counter()
    Xq = vec.transform(query_texts)
    s = np.asarray((Xq @ Xt.T).todense())  # rows are l2-normalised: this is the cosine
    return s, _timing(t1 - t0, time.perf_counter() - t1)


def tfidf_scores(ctx):
    t0 = time.perf_counter()
    if _kind(ctx) == "lm":
        return _tfidf_text(ctx.train_texts, ctx.query_texts)
    else:
        Xt = ctx.X_train / np.maximum(np.linalg.norm(ctx.X_train, axis=1, keepdims=True), 1e-12)
        t1 = time.perf_counter()
        s = _cosine(ctx.X_query, Xt)
    return s, _timing(t1 - t0, time.perf_counter() - t1)


def tfidf_prefix_scores(ctx):
    """TF-IDF with each training document cut to the tokens STRIDE's bench cache holds (its first
    block_size tokens, decoded): a control for how much STRIDE loses by seeing only that part (PAPER.md D4)."""
    if _kind(ctx) != "lm":
        return tfidf_scores(ctx)
    prefixes = ctx.tokenizer.batch_decode([list(ids)[:ctx.block_size] for ids in ctx.train_token_ids])
    return _tfidf_text(prefixes, ctx.query_texts)


# ---------------------------------------------------------------------------------------- repsim


def _mlp_penultimate(model, X: np.ndarray, device: str) -> np.ndarray:
    import torch

    mods = list(model.children())
    with torch.no_grad():
        h = torch.as_tensor(X, dtype=torch.float32, device=device)
        for mod in mods[:-1]:  # everything before the last linear layer: output of act2
            h = mod(h)
    return h.double().cpu().numpy()


def _lm_windows(ids: list[int], eos: int, block: int) -> list[list[int]]:
    """`[eos] + ids` cut into windows of block + 1 tokens overlapping by one (input + next token)."""
    seq = [eos, *ids]
    return [seq[s:s + block + 1] for s in range(0, max(1, len(seq) - 1), block) if len(seq[s:s + block + 1]) >= 2]


def _lm_pooled(model, token_lists: list[list[int]], eos: int, block: int, layer: int, device: str,
               batch_size: int = 64) -> np.ndarray:
    """(n, D) mean over every real token (not the leading <eos>) of hidden_states[layer]."""
    import torch

    chunks, owner = [], []
    for d, ids in enumerate(token_lists):
        for s in range(0, max(1, len(ids)), block - 1):
            piece = ids[s:s + block - 1]
            if piece:
                chunks.append([eos, *piece])
                owner.append(d)
    D = model.config.n_embd
    sums = np.zeros((len(token_lists), D))
    counts = np.zeros(len(token_lists))
    owner = np.asarray(owner)
    with torch.no_grad():
        for s in range(0, len(chunks), batch_size):
            batch = chunks[s:s + batch_size]
            L = max(len(c) for c in batch)
            inp = torch.full((len(batch), L), eos, dtype=torch.long)
            valid = torch.zeros((len(batch), L), dtype=torch.float64)
            for i, c in enumerate(batch):
                inp[i, :len(c)] = torch.tensor(c)
                valid[i, 1:len(c)] = 1.0
            hs = model(input_ids=inp.to(device), output_hidden_states=True).hidden_states[layer].double().cpu()
            pooled = (hs * valid[..., None]).sum(1).numpy()
            np.add.at(sums, owner[s:s + len(batch)], pooled)
            np.add.at(counts, owner[s:s + len(batch)], valid.sum(1).numpy())
    return sums / np.maximum(counts, 1)[:, None]


def repsim_scores(ctx):
    t0 = time.perf_counter()
    if _kind(ctx) == "lm":
        model = ctx.load_model()
        layer = max(1, model.config.n_layer // 2)
        Ht = _lm_pooled(model, ctx.train_token_ids, ctx.eos_id, ctx.block_size, layer, ctx.device)
        t1 = time.perf_counter()
        Hq = _lm_pooled(model, [p + c for p, c in zip(ctx.query_prompt_ids, ctx.query_cont_ids)], ctx.eos_id,
                        ctx.block_size, layer, ctx.device)
    else:
        Ht = _mlp_penultimate(ctx.model, ctx.X_train, ctx.device)
        t1 = time.perf_counter()
        Hq = _mlp_penultimate(ctx.model, ctx.X_query, ctx.device)
    s = _cosine(Hq, Ht)
    return s, _timing(t1 - t0, time.perf_counter() - t1)


# --------------------------------------------------------------------------------------- graddot


def _mlp_grads(model, X: np.ndarray, y: np.ndarray, device: str, chunk: int = 256):
    """Yields (n_chunk, P) per-example gradients of the cross-entropy wrt all parameters."""
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_fn(p, x, t):
        return F.cross_entropy(functional_call(model, p, (x[None],)), t[None])

    g = vmap(grad(loss_fn), in_dims=(None, 0, 0))
    Xt = torch.as_tensor(X, dtype=torch.float32, device=device)
    yt = torch.as_tensor(y, dtype=torch.long, device=device)
    for s in range(0, len(Xt), chunk):
        gs = g(params, Xt[s:s + chunk], yt[s:s + chunk])
        yield torch.cat([v.reshape(v.shape[0], -1) for v in gs.values()], dim=1)


def _lm_flat_grad(model, loss):  # -> torch.Tensor (P,)
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    gs = torch.autograd.grad(loss, params)
    return torch.cat([g.reshape(-1) for g in gs])


def _lm_doc_loss(model, ids: list[int], eos: int, block: int, device: str):
    import torch
    import torch.nn.functional as F

    wins = _lm_windows(ids, eos, block)
    L = max(len(w) for w in wins) - 1
    inp = torch.full((len(wins), L), eos, dtype=torch.long)
    tgt = torch.full((len(wins), L), -100, dtype=torch.long)
    for i, w in enumerate(wins):
        inp[i, :len(w) - 1] = torch.tensor(w[:-1])
        tgt[i, :len(w) - 1] = torch.tensor(w[1:])
    logits = model(input_ids=inp.to(device)).logits
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt.to(device).reshape(-1), ignore_index=-100)


def _lm_query_loss(model, eos: int, p: list[int], c: list[int], device: str):
    import torch
    import torch.nn.functional as F

    seq = torch.tensor([eos, *p, *c], device=device)
    logits = model(input_ids=seq[None, :-1]).logits[0]
    return F.cross_entropy(logits[len(p):], seq[1 + len(p):])


def graddot_scores(ctx):
    import torch

    if _kind(ctx) == "digits":
        import torch.func  # noqa: F401  (import outside the timed region)

        t0 = time.perf_counter()
        Gq = torch.cat(list(_mlp_grads(ctx.model, ctx.X_query, ctx.y_query, ctx.device)))
        t1 = time.perf_counter()
        s = torch.cat([Gq @ Gt.T for Gt in _mlp_grads(ctx.model, ctx.X_train, ctx.y_train, ctx.device)], dim=1)
        t2 = time.perf_counter()
        return s.double().cpu().numpy(), _timing(t2 - t1, t1 - t0, n_params=int(Gq.shape[1]))

    model = ctx.load_model()
    t0 = time.perf_counter()
    Gq = torch.stack([_lm_flat_grad(model, _lm_query_loss(model, ctx.eos_id, p, c, ctx.device))
                      for p, c in zip(ctx.query_prompt_ids, ctx.query_cont_ids)])  # (Q, P)
    t1 = time.perf_counter()
    s = torch.zeros((ctx.n_query, ctx.n_train), dtype=torch.float64)
    for i, ids in enumerate(ctx.train_token_ids):
        if not ids:
            continue
        g = _lm_flat_grad(model, _lm_doc_loss(model, ids, ctx.eos_id, ctx.block_size, ctx.device))
        s[:, i] = (Gq @ g).double().cpu()
    t2 = time.perf_counter()
    return s.numpy(), _timing(t2 - t1, t1 - t0, n_params=int(Gq.shape[1]), note="train gradients streamed")


BASELINES = {
    "random": random_scores,
    "generic": generic_scores,
    "tfidf": tfidf_scores,
    "tfidf-prefix": tfidf_prefix_scores,
    "repsim": repsim_scores,
    "graddot": graddot_scores,
}
