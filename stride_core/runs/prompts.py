"""Prompts: reading them from files (.txt / .jsonl / .json), greedy continuations or given completions,
and the token items each query's loss is measured on.
"""

from __future__ import annotations

import logging
from pathlib import Path


from ..method.arguments import LOSS_ON, AttributeArgs
from ..errors import InputError, StrideError

logger = logging.getLogger(__name__)


def read_prompts(path) -> list[dict]:
    """.txt (one prompt per line), .jsonl (field `prompt`, or `text`; optional `query_id`/`prompt_id`/`id` and
    `completion`, the text to attribute instead of the model's own continuation) or .json (a list of such
    objects) -> [{"query_id", "prompt"[, "completion"]}]. Blank prompts are skipped; duplicate ids raise."""
    from ..store.items import file_kind, read_text_file

    p = Path(path)
    return parse_prompts(read_text_file(p, "prompts"), file_kind(p), p)


def parse_prompts(raw: str, suffix: str, where="prompts") -> list[dict]:
    """The content of a prompts file (`suffix` .txt, .jsonl or .json), as `read_prompts` reads it."""
    from ..store.items import json_records

    p = Path(where)
    out = []
    if suffix in (".jsonl", ".json"):
        for loc, obj in json_records(p, raw, suffix):
            text = obj.get("prompt", obj.get("text")) if isinstance(obj, dict) else None
            if not isinstance(text, str):
                raise InputError(f"{loc}: each prompt needs a string field 'prompt' (or 'text')")
            qid = next((obj[k] for k in ("query_id", "prompt_id", "id") if obj.get(k) is not None), f"q{len(out):03d}")
            completion = obj.get("completion")
            if completion is not None and not (isinstance(completion, str) and completion.strip()):
                raise InputError(f"{loc}: 'completion' must be a non-empty string (the text to attribute), or left out")
            out.append({"query_id": str(qid), "prompt": text, **({"completion": completion} if completion is not None else {})})
    elif suffix == ".txt":
        out = [{"query_id": f"q{i:03d}", "prompt": line} for i, line in enumerate(l for l in raw.splitlines() if l.strip())]
    else:
        raise InputError(f"{p}: prompts must be .txt (one per line), .jsonl (field 'prompt') or .json (a list of objects)")
    out = [o for o in out if o["prompt"].strip()]
    if not out:
        raise InputError(f"{p}: the prompts file is empty")
    seen: set[str] = set()
    dup = sorted({o["query_id"] for o in out if o["query_id"] in seen or seen.add(o["query_id"])})
    if dup:
        raise InputError(f"{p}: duplicate prompt ids: {', '.join(dup[:10])}")
    return out


# Tokens the prompted model finds less likely than this fraction of its top token are never chosen by the
# contrast: it may only re-rank plausible tokens (the adaptive plausibility constraint of contrastive decoding)
PLAUSIBILITY = 0.1


class PromptContrast:
    """A logits processor for `generate`: score each next token by (1 + a) log p(t | prompt, so far) - a log p(t |
    so far), the second term from the same model with the prompt left out. A tiny model's greedy text is
    mostly what it would say after any prompt ("the default value. The optional argument ..."); the contrast
    favours what this prompt makes likelier (context-aware decoding). Costs one forward pass of the
    continuation so far per new token (no KV cache: the contexts are short)."""

    def __init__(self, model, bos: int, prompt_len: int, strength: float):
        self.model, self.bos, self.prompt_len, self.strength = model, int(bos), int(prompt_len), float(strength)

    def __call__(self, input_ids, scores):
        import math

        import torch

        so_far = input_ids[:, self.prompt_len:]  # [B, t] tokens generated so far
        ctx = torch.cat([torch.full((so_far.shape[0], 1), self.bos, dtype=so_far.dtype, device=so_far.device), so_far], 1)
        with torch.no_grad():
            bare = self.model(input_ids=ctx, attention_mask=torch.ones_like(ctx)).logits[:, -1, :].float().log_softmax(-1)  # [B, V]
        cond = scores.float().log_softmax(-1)  # [B, V], after the repetition settings
        out = (1 + self.strength) * cond - self.strength * bare
        implausible = cond < cond.max(-1, keepdim=True).values + math.log(PLAUSIBILITY)
        return out.masked_fill(implausible, float("-inf")).to(scores.dtype)


class ContinuationRepetitionPenalty:
    """A logits processor for `generate`: transformers' own repetition penalty (CTRL: a positive score divided by
    `penalty`, a negative one multiplied) applied to the tokens from position `prompt_len` on. With `prompt_len`
    past the prompt only the continuation's tokens are penalised: transformers' `repetition_penalty` also penalises
    every prompt token, which steers a small model away from the words that make its text about the prompt (with
    it, the demo's continuations were no closer to their own prompt than to the others); `prompt_len` 0 is
    transformers' rule. (transformers >= 5 has `prompt_ignore_length` for this; the project allows 4.44.)"""

    def __init__(self, prompt_len: int, penalty: float):
        from transformers import RepetitionPenaltyLogitsProcessor

        self.prompt_len, self.rule = int(prompt_len), RepetitionPenaltyLogitsProcessor(float(penalty))

    def __call__(self, input_ids, scores):
        so_far = input_ids[:, self.prompt_len:]  # [B, t] the tokens the penalty counts
        return self.rule(so_far, scores) if so_far.shape[1] else scores


def generate(task, prompts: list[dict], args: AttributeArgs | int) -> list[dict]:
    """Each prompt with its token ids and the continuation to attribute: the prompt's `completion` when it
    has one (teacher forcing: "why did the model say X?"), else the model's greedy continuation with the
    repetition and contrast settings of `args` (an int is taken as max_new_tokens with the default settings).

    Prompt + continuation must fit in the run's `max_tokens` (the index setting, cache.max_tokens): a longer
    prompt keeps its last tokens and a longer completion its first ones, with a warning naming the limit.
    Each output dict holds `prompt_used` (the prompt text actually scored) and `truncated`."""
    import torch

    args = args if isinstance(args, AttributeArgs) else AttributeArgs(max_new_tokens=int(args))
    tok, model = task.tokenizer, task.model
    limit = task.max_tokens
    out, cut_prompt, cut_completion = [], [], []
    for p in prompts:
        ids = list(p["prompt_ids"]) if p.get("prompt_ids") is not None else tok(p["prompt"], add_special_tokens=False)["input_ids"]
        if not ids:
            raise InputError(f"prompt {p['query_id']!r} tokenizes to nothing")
        completion = p.get("completion")
        if completion is not None:
            cont = tok(completion, add_special_tokens=False)["input_ids"]
            if not cont:
                raise InputError(f"the completion of prompt {p['query_id']!r} tokenizes to nothing")
            if len(cont) > limit - 1:
                cut_completion.append(p["query_id"])
                cont = cont[: limit - 1]
            budget = limit - len(cont)
        else:
            budget = limit - args.max_new_tokens
            if budget < 1:
                raise StrideError(f"max_new_tokens={args.max_new_tokens} leaves no room for the prompt within the run's "
                                  f"max_tokens={limit}: lower --max-new-tokens")
        truncated = len(ids) > budget
        if truncated:
            cut_prompt.append(p["query_id"])
            ids = ids[-budget:]  # keep the end: it conditions the continuation
        if completion is None:
            cont = []
            if args.max_new_tokens > 0:
                with torch.no_grad():
                    inp = torch.tensor([[task.bos, *ids]], device=task.device)
                    gen = model.generate(inp, attention_mask=torch.ones_like(inp), max_new_tokens=args.max_new_tokens,
                                         do_sample=False, no_repeat_ngram_size=args.no_repeat_ngram_size,
                                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                         logits_processor=_decoding_processors(task, inp.shape[1], args))
                cont = gen[0, inp.shape[1]:].tolist()
                if tok.eos_token_id in cont:
                    cont = cont[: cont.index(tok.eos_token_id)]
        text = p.get("prompt")
        used = tok.decode(ids) if truncated or text is None else text
        out.append({**p, "prompt_ids": ids, "continuation_ids": cont, "continuation": completion if completion is not None else tok.decode(cont),
                    "prompt_used": used, "truncated": truncated})
    if cut_prompt:
        logger.warning("%d prompt(s) truncated to their last tokens to fit the run's max_tokens=%d (an index setting, "
                       "`stride index --max-tokens`; the model's own context is %d): %s", len(cut_prompt), limit,
                       task.context, ", ".join(map(str, cut_prompt[:20])))
    if cut_completion:
        logger.warning("%d completion(s) truncated to their first %d tokens (the run's max_tokens=%d): %s", len(cut_completion),
                       limit - 1, limit, ", ".join(map(str, cut_completion[:20])))
    return out


def _decoding_processors(task, prompt_len: int, args: AttributeArgs):
    """`generate`'s logits processors: the repetition penalty (on the continuation only, unless `penalise_prompt`),
    then the prompt contrast, which so re-ranks penalised scores."""
    from transformers import LogitsProcessorList

    procs = [ContinuationRepetitionPenalty(0 if args.penalise_prompt else prompt_len, args.repetition_penalty)]
    if args.contrast > 0:
        procs.append(PromptContrast(task.model, task.bos, prompt_len, args.contrast))
    return LogitsProcessorList(procs)


def query_items(gens: list[dict], loss_on: str = "all") -> list[tuple[list[int], int]]:
    """(token ids, first scored position) of each generated/completed prompt. loss_on="all" scores the prompt
    and its continuation; "continuation" only the continuation (a prompt without one then has its own
    tokens scored)."""
    if loss_on not in LOSS_ON:
        raise ValueError(f"loss_on must be one of {LOSS_ON}, not {loss_on!r}")
    return [(g["prompt_ids"] + g["continuation_ids"], len(g["prompt_ids"]) if loss_on == "continuation" and g["continuation_ids"] else 0)
            for g in gens]


def query_text(g: dict, loss_on: str = "all") -> str:
    """The text whose loss is measured (what the lexical ranking compares with the documents)."""
    if loss_on == "continuation" and g["continuation"]:
        return g["continuation"]
    return g.get("prompt_used", g["prompt"]) + g["continuation"]
