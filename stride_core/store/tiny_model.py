"""Train the built-in tiny causal LM: a byte-level BPE tokenizer and a small Llama (the `default` preset) or
GPT-2 (`ci`) from a config, trained from scratch on a corpus and saved in Hugging Face format (safetensors)."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import StrideError

logger = logging.getLogger(__name__)


@dataclass
class TinyModelArgs:
    """Architecture and training schedule. Presets: `ci` (< 1 min) and `default` (~10 min on 2 idle CPU cores)."""

    # "llama" (rotary positions, SwiGLU, RMSNorm) or "gpt2". At 2,000 steps of the default size the Llama form reached
    # validation loss 3.81 on pydocs against GPT-2's 4.01 (BENCHMARKS.md, "A Llama-form default model"); the
    # benchmarks' own models stay GPT-2, so their cached ground truth stays valid
    family: str = "gpt2"
    vocab_size: int = 4096
    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    block_size: int = 128
    epochs: float = 4.0
    # A small corpus gets more epochs: 4 epochs of 100k tokens are ~200 optimizer steps, which left a model
    # near its unigram loss (6.24 vs 6.80 on 1,500 man-page paragraphs) that continued every prompt alike.
    min_steps: int = 0
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 0.05
    val_fraction: float = 0.05
    max_docs: int | None = None
    seed: int = 0

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise StrideError(f"family must be one of {', '.join(FAMILIES)}, not {self.family!r}")
        if self.n_embd % self.n_head:
            raise StrideError("n_embd must be divisible by n_head")
        if not (0 < self.val_fraction < 0.5):
            raise StrideError("val_fraction must be in (0, 0.5)")
        if self.max_docs is not None and self.max_docs < 2:
            raise StrideError("max_docs must be >= 2 (or None / --max-docs 0 for the whole corpus)")
        if self.min_steps < 0:
            raise StrideError("min_steps must be >= 0")
        if self.epochs <= 0 or self.batch_size < 1 or self.block_size < 8:
            raise StrideError("epochs must be > 0, batch_size >= 1 and block_size >= 8")
        from ..method.arguments import check_float, check_int

        check_int(self.vocab_size, "vocab_size", 2)
        check_int(self.n_layer, "n_layer", 1)
        check_float(self.epochs, "epochs", 0.0, lo_open=True)
        check_float(self.lr, "lr", 0.0, lo_open=True)
        check_float(self.weight_decay, "weight_decay")

    @classmethod
    def preset(cls, name: str) -> "TinyModelArgs":
        if name == "ci":
            return cls(vocab_size=1024, n_layer=2, n_embd=64, n_head=2, block_size=64, epochs=4.0,
                       batch_size=16, lr=5e-3, max_docs=400)
        if name == "default":
            # at least 2,000 steps (pydocs: ~11 epochs instead of 4; a 1,500-paragraph corpus: ~35): a model that has
            # learnt its corpus, so that what it says can be traced to it (BENCHMARKS.md, "Tracing"); 2,000 rather
            # than 1,500 steps carried the prompts' topic better (own-prompt rank 3.0 vs 5.0) for 8 min of CPU
            return cls(family="llama", min_steps=2000)
        raise StrideError(f"unknown preset {name!r}: use ci or default")


def train_tokenizer(texts: list[str], vocab_size: int, out_dir: Path):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=["<|endoftext|>"], show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                  unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    tok.save_pretrained(out_dir)
    return tok


def split_docs(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_val = max(1, int(round(n * val_fraction)))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def pack(token_lists: list[list[int]], eos: int, block: int) -> np.ndarray:
    """Concatenate documents with EOS separators and cut into (n_blocks, block+1) windows."""
    flat = np.fromiter((t for ids in token_lists for t in (*ids, eos)), dtype=np.int64)
    n = (len(flat) - 1) // block
    if n < 1:
        raise StrideError("not enough text to train a model: the corpus is too small for one block")
    return np.stack([flat[i * block: i * block + block + 1] for i in range(n)])


def unigram_loss(train_ids: list[list[int]], val_ids: list[list[int]], vocab: int) -> float:
    counts = np.ones(vocab)
    for ids in train_ids:
        np.add.at(counts, ids, 1)
    logp = np.log(counts / counts.sum())
    val = np.concatenate([np.asarray(x) for x in val_ids if len(x)])
    return float(-logp[val].mean())


FAMILIES = ("llama", "gpt2")


def build_config(args: TinyModelArgs, vocab_size: int, eos_id: int):
    """The transformers config of `args.family` (GPT2Config or LlamaConfig) at the given size."""
    from transformers import GPT2Config, LlamaConfig

    if args.family == "llama":
        # SwiGLU's three matrices at 8/3 of the width (rounded up to a multiple of 8) hold the parameters of
        # GPT-2's two at 4x; no dropout, tied embeddings, as the GPT-2 form
        return LlamaConfig(vocab_size=vocab_size, hidden_size=args.n_embd, intermediate_size=8 * math.ceil(args.n_embd / 3),
                           num_hidden_layers=args.n_layer, num_attention_heads=args.n_head, num_key_value_heads=args.n_head,
                           max_position_embeddings=max(512, args.block_size), bos_token_id=eos_id, eos_token_id=eos_id,
                           pad_token_id=eos_id, tie_word_embeddings=True, rope_theta=10000.0)
    return GPT2Config(vocab_size=vocab_size, n_positions=max(512, args.block_size), n_embd=args.n_embd,
                      n_layer=args.n_layer, n_head=args.n_head, bos_token_id=eos_id, eos_token_id=eos_id,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True)


def build_model(args: TinyModelArgs, vocab_size: int, eos_id: int):
    """A randomly initialised causal LM of `args.family` (seeded by the caller's torch RNG state)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(build_config(args, vocab_size, eos_id))


def train_lm(model, blocks: np.ndarray, args: TinyModelArgs, progress: bool = True, device: str = "cpu",
             on_progress=None) -> list[float]:
    """AdamW with warmup + cosine decay on packed blocks (n_blocks, block+1). Returns the loss trace.
    `on_progress(fraction, message=None, **metrics)` (e.g. progress.Reporter.update) is called every step."""
    import torch
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(args.seed)
    data = torch.from_numpy(blocks)
    steps = max(1, int(math.ceil(len(data) * args.epochs / args.batch_size)), args.min_steps)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.95))
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    model.train().to(device)
    trace = []
    n_epochs = int(math.ceil(steps * args.batch_size / len(data))) + 1
    order = torch.cat([torch.randperm(len(data), generator=g) for _ in range(n_epochs)])
    bar = tqdm(range(steps), desc="train", disable=not progress, mininterval=1.0)
    for s in bar:
        idx = order[s * args.batch_size:(s + 1) * args.batch_size]
        batch = data[idx].to(device)
        logits = model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        trace.append(loss.item())
        if s % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(trace[-20:]):.3f}")
        if on_progress is not None:
            on_progress((s + 1) / steps, f"step {s + 1} of {steps}", loss=float(np.mean(trace[-20:])))
    model.eval()
    return trace


def eval_loss(model, token_lists: list[list[int]], eos: int, block: int, device: str = "cpu") -> float:
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for ids in token_lists:
            seq = torch.tensor([eos, *ids][: block + 1], device=device)[None]
            if seq.size(1) < 2:
                continue
            logits = model(input_ids=seq[:, :-1]).logits
            loss = torch.nn.functional.cross_entropy(logits[0], seq[0, 1:], reduction="sum")
            total += float(loss)
            count += seq.size(1) - 1
    return total / max(count, 1)


# Shares of the progress fraction given to the steps before and after the training loop: small, because the
# loop is nearly all of the time and the Runs page extrapolates its ETA linearly from the fraction.
_TOKENIZE_SHARE, _EVAL_SHARE = 0.02, 0.01


def train_tiny(ws, corpus: str, out_dir: str | Path, args: TinyModelArgs, progress: bool = True, device: str = "cpu",
               on_progress=None) -> dict:
    """Train tokenizer + model on `corpus`, save to `out_dir`, return metrics (val loss vs unigram).
    `on_progress(fraction, message=None, **metrics)` gets the overall fraction done (0..1)."""
    import torch

    report = on_progress or (lambda *a, **k: None)

    from .corpus import load_documents

    t0 = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    from .corpus import corpus_info

    n_corpus = int(corpus_info(ws, corpus)["n_docs"])
    docs = load_documents(ws, corpus, columns=["doc_id", "text"], limit=args.max_docs)
    texts = docs["text"].tolist()
    if len(texts) < n_corpus:
        logger.warning("training on the first %d of the %d documents of corpus %r (max_docs=%d); documents beyond them "
                       "are unseen by the model, so they cannot be memorised or traced", len(texts), n_corpus, corpus, args.max_docs)
    train_idx, val_idx = split_docs(len(texts), args.val_fraction, args.seed)
    report(0.0, f"training the tokenizer on {len(train_idx)} documents")
    tok = train_tokenizer([texts[i] for i in train_idx], args.vocab_size, out_dir)
    report(_TOKENIZE_SHARE / 2, "tokenizing")
    eos = tok.eos_token_id
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    train_ids = [ids[i] for i in train_idx]
    val_ids = [ids[i] for i in val_idx]
    blocks = pack(train_ids, eos, args.block_size)
    model = build_model(args, len(tok), eos)
    span = 1.0 - _TOKENIZE_SHARE - _EVAL_SHARE
    trace = train_lm(model, blocks, args, progress=progress, device=device,
                     on_progress=lambda f, message=None, **m: report(_TOKENIZE_SHARE + span * f, message, **m))
    report(1.0 - _EVAL_SHARE, "validation loss")
    val = eval_loss(model, val_ids, eos, args.block_size, device)
    uni = unigram_loss(train_ids, val_ids, len(tok))
    model.to("cpu").save_pretrained(out_dir, safe_serialization=True)
    metrics = {
        "corpus": corpus, "n_corpus_docs": n_corpus, "n_used_docs": len(texts), "n_train_docs": len(train_idx), "n_val_docs": len(val_idx),
        "train_tokens": int(blocks.size), "n_params": sum(p.numel() for p in model.parameters()),
        "final_train_loss": float(np.mean(trace[-20:])), "val_loss": val, "unigram_val_loss": uni,
        "seconds": time.time() - t0, "args": asdict(args), "val_doc_ids": docs["doc_id"].iloc[val_idx].tolist(),
    }
    (out_dir / "stride_training.json").write_text(json.dumps(metrics, indent=1))
    report(1.0, f"validation loss {val:.3f} (unigram {uni:.3f})")
    logger.info("trained tiny model: val loss %.3f vs unigram %.3f in %.0fs", val, uni, metrics["seconds"])
    return metrics
