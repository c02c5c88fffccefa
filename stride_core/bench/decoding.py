"""`stride bench decoding`: are the continuations being attributed about their prompts?

An indexed run's model continues the prompts (default: the checkout's sample prompts) under each
`--contrast` strength of context-aware decoding (`AttributeArgs.contrast`, 0 = the plain greedy decoding
with the repetition settings), and once more at strength 0 with the repetition penalty on the prompt's tokens
too (transformers' rule, `penalise_prompt`; the product's rule spares them). For each setting we report, with a TF-IDF space fitted on the run's corpus:
  on-prompt     mean cosine between a continuation and its own prompt;
  specificity   on-prompt minus the mean cosine with the other prompts (0: the text would fit any prompt);
  cross-sim     mean cosine between the continuations of two different prompts (generic text scores high);
  distinct-2    distinct word bigrams over all bigrams of all continuations;
  nll           the model's own loss (nats/token) on its continuation after the prompt: what fluency costs.
Results: DIR/results.json, DIR/continuations.md (each prompt's continuation at each strength, to read).
"""

from __future__ import annotations

import json
import logging
import platform
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def continuation_metrics(prompts: list[str], continuations: list[str], corpus_texts: list[str]) -> dict:
    """The lexical measures of the module docstring, in a TF-IDF space fitted on `corpus_texts`."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(sublinear_tf=True).fit(corpus_texts)
    P = vec.transform(prompts)
    C = vec.transform(continuations)
    S = np.asarray((C @ P.T).todense())  # (Q, Q): continuation i against prompt j
    Q = len(prompts)
    off = ~np.eye(Q, dtype=bool)
    own = np.diag(S)
    others = (S * off).sum(1) / max(Q - 1, 1)
    CC = np.asarray((C @ C.T).todense())
    words = [c.lower().split() for c in continuations]
    bigrams = [tuple(w[i:i + 2]) for w in words for i in range(len(w) - 1)]
    return {"on_prompt": float(own.mean()), "specificity": float((own - others).mean()),
            "cross_sim": float(CC[off].mean()) if Q > 1 else 0.0,
            "distinct2": float(len(set(bigrams)) / len(bigrams)) if bigrams else 0.0}


def continuation_nll(task, gens: list[dict]) -> float:
    """Mean next-token loss (nats) of the continuation tokens after [bos] + prompt, over all prompts' tokens."""
    import torch

    total, n = 0.0, 0
    for g in gens:
        cont = g["continuation_ids"]
        if not cont:
            continue
        ids = torch.tensor([[task.bos, *g["prompt_ids"], *cont]], device=task.device)
        with torch.no_grad():
            logp = task.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, :-1].float().log_softmax(-1)
        start = 1 + len(g["prompt_ids"]) - 1  # the logit row predicting the first continuation token
        tgt = ids[0, start + 1:]
        total -= float(logp[start:].gather(1, tgt[:, None]).sum())
        n += len(cont)
    return total / n if n else float("nan")


def run_decoding_bench(ws, run: str, out: str | Path, prompts_path=None, contrasts=(0.0, 0.5, 1.0, 2.0),
                       max_new_tokens: int = 32, device: str = "auto") -> dict:
    from ..errors import StrideError
    from ..method.arguments import AttributeArgs
    from ..runs.demo import sample_prompts_path
    from ..runs.indexing import load_run, load_task
    from ..runs.prompts import generate, read_prompts
    from ..store.corpus import load_documents
    from ..store.models import resolve_device

    if not contrasts or any(c < 0 for c in contrasts):
        raise StrideError("--contrast takes one or more strengths >= 0, e.g. 0,0.5,1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _, config = load_run(ws, run)
    task = load_task(config, resolve_device(device))
    prompts = read_prompts(prompts_path or sample_prompts_path("jsonl"))
    texts = load_documents(ws, config.corpus, ["text"], shards=config.shards)["text"].astype(str).tolist()
    results, conts = {}, {}
    settings = [(f"{c:g}", float(c), False) for c in contrasts] + [("0, prompt penalised", 0.0, True)]
    for key, c, penalise_prompt in settings:
        t0 = time.perf_counter()
        gens = generate(task, [{"query_id": p["query_id"], "prompt": p["prompt"]} for p in prompts],
                        AttributeArgs(max_new_tokens=max_new_tokens, contrast=c, penalise_prompt=penalise_prompt, device=device))
        secs = time.perf_counter() - t0
        conts[key] = [g["continuation"] for g in gens]
        results[key] = {**continuation_metrics([g["prompt"] for g in gens], conts[key], texts),
                        "nll": continuation_nll(task, gens), "seconds": round(secs, 2)}
        logger.info("decoding bench: contrast %s done in %.1f s", key, secs)
    summary = {"run": run, "corpus": config.corpus, "model": config.model, "n_prompts": len(prompts),
               "max_new_tokens": max_new_tokens, "results": results, "machine": platform.platform(),
               "date": time.strftime("%Y-%m-%d %H:%M")}
    (out / "results.json").write_text(json.dumps({**summary, "continuations": conts}, indent=1))
    lines = ["| prompt | " + " | ".join(f"contrast {k}" for k in conts) + " |", "|---" * (len(conts) + 1) + "|"]
    for i, p in enumerate(prompts):
        cells = [p["prompt"]] + [conts[k][i] for k in conts]
        lines.append("| " + " | ".join(s.replace("|", "\\|").replace("\n", " ") for s in cells) + " |")
    (out / "continuations.md").write_text("\n".join(lines) + "\n")
    print(f"decoding bench: run {run!r} ({config.model}), {len(prompts)} prompts, {max_new_tokens} new tokens")
    print(f"{'contrast':>20s} {'on-prompt':>10s} {'specificity':>12s} {'cross-sim':>10s} {'distinct-2':>11s} {'nll':>7s} {'s':>7s}")
    for k, r in results.items():
        print(f"{k:>20s} {r['on_prompt']:10.3f} {r['specificity']:12.3f} {r['cross_sim']:10.3f} {r['distinct2']:11.3f} "
              f"{r['nll']:7.3f} {r['seconds']:7.1f}")
    print(f"continuations: {out / 'continuations.md'}")
    return summary


def register(bench_sub, common):
    x = bench_sub.add_parser("decoding", parents=[common],
                             help="do a run's continuations follow their prompts? lexical measures per --contrast strength")
    x.add_argument("--run", required=True, help="an indexed run (its model and corpus are used)")
    x.add_argument("--out", required=True, help="output folder (results.json, continuations.md)")
    x.add_argument("--prompts", default=None, help="prompts file (default: the checkout's data/sample_prompts.jsonl)")
    x.add_argument("--contrast", default="0,0.5,1,2", help="comma-separated strengths of context-aware decoding")
    x.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, default=32)
    x.add_argument("--device", default="auto")
    x.set_defaults(func=_cmd)


def _cmd(a):
    from ..errors import StrideError
    from ..store.workspace import workspace_at

    try:
        contrasts = [float(v) for v in a.contrast.split(",") if v.strip()]
    except ValueError:
        raise StrideError(f"--contrast takes comma-separated numbers, not {a.contrast!r}") from None
    run_decoding_bench(workspace_at(a.workspace), a.run, a.out, a.prompts, contrasts, a.max_new_tokens, a.device)
