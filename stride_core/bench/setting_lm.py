"""`tiny-lm` and `tiny-lm-paper`: pydocs documents, a byte-level BPE, a small GPT-2 and the continuation
losses of held-out documents as query outputs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import StrideError
from .setting_base import BenchContext, Setting, _hash, torch_threads

logger = logging.getLogger(__name__)

# Bump when the meaning of a cached model or ground-truth output changes (invalidates caches).

def lm_query_losses(model, eos_id: int, prompt_ids: list[list[int]], cont_ids: list[list[int]],
                    device: str = "cpu", batch_size: int = 64) -> np.ndarray:
    """(Q,) mean token NLL (nats) of each continuation given `<eos> + prompt`.

    The input is `[eos] + prompt + continuation[:-1]` (right-padded; causal attention makes padding
    irrelevant), and only the continuation tokens are scored. This is the tiny-lm query output."""
    import torch
    import torch.nn.functional as F

    out = np.zeros(len(prompt_ids))
    model.eval()
    for s in range(0, len(prompt_ids), batch_size):
        ps, cs = prompt_ids[s:s + batch_size], cont_ids[s:s + batch_size]
        seqs = [[eos_id, *p, *c] for p, c in zip(ps, cs)]
        L = max(len(x) for x in seqs) - 1
        inp = torch.full((len(seqs), L), eos_id, dtype=torch.long)
        tgt = torch.zeros((len(seqs), L), dtype=torch.long)
        w = torch.zeros((len(seqs), L), dtype=torch.float64)
        for i, (seq, p) in enumerate(zip(seqs, ps)):
            n = len(seq) - 1
            inp[i, :n] = torch.tensor(seq[:-1])
            tgt[i, :n] = torch.tensor(seq[1:])
            w[i, len(p):n] = 1.0
        with torch.no_grad():
            logits = model(input_ids=inp.to(device)).logits.double()
        nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt.to(device).reshape(-1), reduction="none")
        nll = nll.view(tgt.shape).cpu()
        out[s:s + len(seqs)] = ((nll * w).sum(1) / w.sum(1)).numpy()
    return out


def split_prompt(tok, ids: list[int], fraction: float) -> int | None:
    """Smallest k >= round(fraction * len) such that prompt ids[:k] and continuation ids[k:] each
    re-tokenize to themselves from their decoded strings (so string users see the same tokens)."""
    n = len(ids)
    start = max(1, int(round(fraction * n)))
    for k in range(start, n - max(4, n // 4) + 1):
        p, c = tok.decode(ids[:k]), tok.decode(ids[k:])
        if tok(p, add_special_tokens=False)["input_ids"] == ids[:k] and tok(c, add_special_tokens=False)["input_ids"] == ids[k:]:
            return k
    return None


@dataclass
class LMContext(BenchContext):
    """Context for `tiny-lm`. The base model lives in `model_dir` (HF format, safetensors; load it with
    `stride_core.store.models.load_model_and_tokenizer(model_dir)` or `ctx.load_model()`).

    Training documents: `train_texts[i]` has stable id `train_ids[i]` (its index in
    `stride_core.store.pydocs.iter_pydocs()` order) and token ids `train_token_ids[i]` (no special tokens;
    training packs them with `<eos>` separators into `block_size` windows).
    Queries: `query_prompts[q] + query_continuations[q] == query_texts[q]` (a held-out document cut to
    `block_size` tokens); the output is the mean NLL of the continuation given `<eos> + prompt`
    (`lm_query_losses`); `query_prompt_ids` / `query_cont_ids` are the exact token ids used."""

    model_dir: Path = None
    tokenizer: object = None
    eos_id: int = 0
    block_size: int = 64
    train_texts: list = None
    train_token_ids: list = None
    train_sources: list = None
    train_objects: list = None
    query_ids: np.ndarray = None  # (Q,) pydocs indices of the query documents
    query_texts: list = None
    query_prompts: list = None
    query_continuations: list = None
    query_prompt_ids: list = None
    query_cont_ids: list = None
    query_sources: list = None
    query_objects: list = None
    _model: object = None

    @property
    def n_query(self) -> int:
        return len(self.query_prompts)

    def write_corpus_jsonl(self, path) -> Path:
        """The training documents as JSONL ({doc_id, text, source, object}, in train_ids order), e.g.
        for `stride corpus import PATH --name ...`; doc_id = the pydocs index (= train_ids)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            for i, t, src, obj in zip(self.train_ids, self.train_texts, self.train_sources, self.train_objects):
                f.write(json.dumps({"doc_id": int(i), "text": t, "source": src, "object": obj}) + "\n")
        return path

    def load_model(self, device: str | None = None):
        """The base model (cached per context), eval mode."""
        from ..store.models import load_model_and_tokenizer

        dev = device or self.device
        if self._model is None or str(next(self._model.parameters()).device) != str(dev):
            self._model, _ = load_model_and_tokenizer(self.model_dir, device=dev)
        return self._model

    def query_outputs(self, model=None, device: str | None = None) -> np.ndarray:
        dev = device or self.device
        return lm_query_losses(model if model is not None else self.load_model(dev), self.eos_id,
                               self.query_prompt_ids, self.query_cont_ids, dev)


@dataclass(frozen=True)
class TinyLMSetting(Setting):
    name: str = "tiny-lm"
    n_train: int = 1000
    n_query: int = 50
    n_models: int = 32
    doc_seed: int = 0
    vocab_size: int = 1024
    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 4
    block_size: int = 64
    # 10 epochs of batch 8: a 50% model's held-out loss is within ~2% of its 14-20-epoch plateau
    # (6 epochs: +10%); larger batches or learning rates fit worse for the same compute.
    epochs: float = 10.0
    batch_size: int = 8
    lr: float = 5e-3
    weight_decay: float = 0.05
    prompt_fraction: float = 0.4
    min_query_tokens: int = 40
    n_val_docs: int = 200  # held-out documents (not queries) for the base model's fit report

    def __post_init__(self):
        super().__post_init__()
        if not (0.1 <= self.prompt_fraction <= 0.9):
            raise StrideError("prompt_fraction must be in [0.1, 0.9]")
        if self.min_query_tokens < 8:
            raise StrideError("min_query_tokens must be >= 8")

    def train_args(self, seed: int):
        from ..store.tiny_model import TinyModelArgs

        return TinyModelArgs(vocab_size=self.vocab_size, n_layer=self.n_layer, n_embd=self.n_embd, n_head=self.n_head,
                             block_size=self.block_size, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                             weight_decay=self.weight_decay, seed=seed)

    def select_docs(self) -> dict:
        """Deterministic train / candidate-query / validation positions in iter_pydocs() order."""
        from ..store.pydocs import iter_pydocs

        docs = list(iter_pydocs())
        if self.n_train + self.n_query + self.n_val_docs > len(docs):
            raise StrideError(f"the pydocs corpus has {len(docs)} documents: n_train + n_query + n_val_docs "
                              f"({self.n_train}+{self.n_query}+{self.n_val_docs}) is too many")
        perm = np.random.default_rng(self.doc_seed).permutation(len(docs))
        train = np.sort(perm[:self.n_train])
        val = perm[len(perm) - self.n_val_docs:]
        candidates = perm[self.n_train:len(perm) - self.n_val_docs]  # queries: first eligible, in this order
        return {"docs": docs, "train": train, "val": val, "candidates": candidates}

    def _train_model(self, token_lists: list[list[int]], eos: int, vocab: int, seed: int, device: str):
        import torch
        from transformers import GPT2LMHeadModel

        from ..store.tiny_model import build_config, pack, train_lm

        args = self.train_args(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = GPT2LMHeadModel(build_config(args, vocab, eos))
        blocks = pack(token_lists, eos, self.block_size)
        with torch_threads(self.train_threads):
            trace = train_lm(model, blocks, args, progress=False, device=device)
        return model, trace, int(blocks.size)

    def build_context(self, cache_dir, device: str = "cpu", progress: bool = True) -> LMContext:
        from transformers import AutoTokenizer

        from ..store.tiny_model import eval_loss, train_tokenizer, unigram_loss

        sel = self.select_docs()
        docs = sel["docs"]
        train_texts = [docs[i]["text"] for i in sel["train"]]
        bdir = self.base_dir(cache_dir)
        done = bdir / "bench_base.json"
        if not done.exists():
            t0 = time.time()
            bdir.mkdir(parents=True, exist_ok=True)
            train_tokenizer(train_texts, self.vocab_size, bdir)
        tok = AutoTokenizer.from_pretrained(str(bdir), local_files_only=True)
        eos = tok.eos_token_id
        train_tok = tok(train_texts, add_special_tokens=False)["input_ids"]

        # queries: first `n_query` eligible held-out documents in the seeded order
        qpos, qtexts, qp, qc, qpi, qci = [], [], [], [], [], []
        for pos in sel["candidates"]:
            if len(qpos) == self.n_query:
                break
            ids = tok(docs[pos]["text"], add_special_tokens=False)["input_ids"]
            if len(ids) < self.min_query_tokens:
                continue
            ids = ids[:self.block_size]
            k = split_prompt(tok, ids, self.prompt_fraction)
            if k is None:
                continue
            p, c = tok.decode(ids[:k]), tok.decode(ids[k:])
            qpos.append(int(pos))
            qtexts.append(p + c)
            qp.append(p)
            qc.append(c)
            qpi.append(ids[:k])
            qci.append(ids[k:])
        if len(qpos) < self.n_query:
            raise StrideError(f"only {len(qpos)} eligible query documents; lower n_query or min_query_tokens")
        fp = _hash({"train": hashlib.sha256("\x00".join(train_texts).encode()).hexdigest(),
                    "ids": sel["train"].tolist(), "tok": hashlib.sha256(json.dumps(tok.get_vocab(), sort_keys=True).encode()).hexdigest()})

        ctx = LMContext(setting=self, cache_dir=Path(cache_dir), device=device, train_ids=sel["train"], fingerprint=fp,
                        model_dir=bdir, tokenizer=tok, eos_id=eos, block_size=self.block_size,
                        train_texts=train_texts, train_token_ids=train_tok,
                        train_sources=[docs[i]["source"] for i in sel["train"]],
                        train_objects=[docs[i]["object"] for i in sel["train"]],
                        query_ids=np.asarray(qpos), query_texts=qtexts, query_prompts=qp, query_continuations=qc,
                        query_prompt_ids=qpi, query_cont_ids=qci,
                        query_sources=[docs[i]["source"] for i in qpos], query_objects=[docs[i]["object"] for i in qpos])

        if not done.exists():
            logger.info("training the tiny-lm base model into %s", bdir)
            model, trace, n_tok = self._train_model(train_tok, eos, len(tok), self.base_seed, device)
            model.to("cpu").save_pretrained(bdir, safe_serialization=True)
            val_tok = tok([docs[i]["text"] for i in sel["val"]], add_special_tokens=False)["input_ids"]
            model.to(device)
            metrics = {
                "n_params": int(sum(p.numel() for p in model.parameters())), "train_tokens": n_tok,
                "final_train_loss": float(np.mean(trace[-20:])),
                "train_loss": eval_loss(model, train_tok, eos, self.block_size, device),
                "val_loss": eval_loss(model, val_tok, eos, self.block_size, device),
                "unigram_val_loss": unigram_loss(train_tok, val_tok, len(tok)), "n_val_docs": len(val_tok),
                "train_seconds": time.time() - t0, "setting": self.base_fields(), "fingerprint": fp,
            }
            done.write_text(json.dumps(metrics, indent=1))
        metrics = json.loads(done.read_text())
        if metrics.get("fingerprint") != fp:
            raise StrideError(f"the cached tiny-lm base model in {bdir} was built from different documents "
                              "(another Python build?); delete that folder to rebuild it")
        q = ctx.query_outputs()
        uni = unigram_loss(train_tok, qci, len(tok))
        ctx.base_metrics = {**metrics, "query_loss": float(q.mean()), "unigram_query_loss": uni, "n_query": ctx.n_query}
        return ctx

    def train_subset(self, ctx: LMContext, mask: np.ndarray, seed: int, device: str = "cpu"):
        idx = np.flatnonzero(mask)
        model, _, _ = self._train_model([ctx.train_token_ids[i] for i in idx], ctx.eos_id, len(ctx.tokenizer), seed, device)
        return model

    def query_outputs(self, ctx: LMContext, model, device: str = "cpu") -> dict[str, np.ndarray]:
        return {"loss": ctx.query_outputs(model, device)}


@dataclass(frozen=True)
class TinyLMPaperSetting(TinyLMSetting):
    """The paper's LDS protocol at CPU scale (PAPER.md D1): ground-truth models on 30% subsets (the
    paper: 256 models on 30%), twice as many of them as tiny-lm, and a 4-block model, so that the
    steered layer (the default, block 2 of 0..3: 3/4 deep, the paper's ~2/3) has a block above it."""

    name: str = "tiny-lm-paper"
    n_models: int = 64
    mask_fraction: float = 0.3
    n_layer: int = 4
