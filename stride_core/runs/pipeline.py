"""Pipeline: `index` (cache activations, design subsets, fit operators, reference) and `attribute`
(continuations, measurement, recovery, ranked documents), with resumable on-disk artifacts.

Run folder (workspace/runs/<run>/):
  args.json, provenance.json, status.json
  cache/                      activation memmaps (activations.py), resumable per document
  subsets.safetensors         membership (N, S) + doc_ids
  operators.safetensors       basis, steering matrices, reference y
  operators_trace.json        loss terms per step
  attributions.parquet        ranked documents of the latest `attribute` call (the DuckDB rows derive from it)
A stage whose artifact exists is skipped; changed arguments under an existing run name raise unless
overwrite=True, or unless only stages that never finished depend on them (those restart). Artifacts
are written to a temporary name and renamed, so an interrupted stage is never mistaken for a finished
one; a failed stage records `failed` with its error in status.json. `index` and `attribute` hold the
run's lock (stride_core.store.locks).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import __version__
from ..method.arguments import LOSS_ON, AttributeArgs, CacheArgs, OperatorArgs, SubsetArgs, preset
from ..errors import InputError, RunError, StrideError
from ..method.generic import remove_generic
from .progress import Reporter, read_status

logger = logging.getLogger(__name__)

ATTRIBUTION_COLUMNS = ["query_id", "prompt", "continuation", "direction", "rank", "doc_id", "score", "snippet"]
# Parquet-only columns: the prompt text actually scored (after cutting to max_tokens) and whether it was cut.
PROMPT_USE_COLUMNS = ["prompt_used", "truncated"]
# Parquet-only columns of a stride+lexical ranking: the TF-IDF cosine and the z-sum the helpful rows are ranked by
HYBRID_COLUMNS = ["lexical", "hybrid_z"]


@dataclass
class IndexConfig:
    corpus: str
    model: str
    shards: list[int] | None
    cache: CacheArgs
    subsets: SubsetArgs
    operators: OperatorArgs

    def to_dict(self) -> dict:
        return {"corpus": self.corpus, "model": self.model, "shards": self.shards, "cache": self.cache.to_dict(),
                "subsets": self.subsets.to_dict(), "operators": self.operators.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "IndexConfig":
        return cls(d["corpus"], d["model"], d.get("shards"), CacheArgs.from_dict(d["cache"]),
                   SubsetArgs.from_dict(d["subsets"]), OperatorArgs.from_dict(d["operators"]))


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(device: str) -> dict:
    import torch

    return {"stride_version": __version__, "git_sha": _git_sha(), "device": device,
            "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
            "torch": torch.__version__, "python": platform.python_version(), "host": platform.node(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


# A preset's K is scaled down on corpora too small for it: K = 0.6 N subsets (S unchanged, at most K) is
# where both LDS benchmarks were measured (tiny-lm K=600 and digits K=800 for N=1000).
SMALL_CORPUS_K_FRACTION = 0.6
# Reference queries (generic component): each reference document's prompt is its first 24 tokens at most.
REFERENCE_PROMPT_TOKENS = 24


def make_config(corpus: str, model: str, preset_name: str = "default", shards=None, n_docs: int | None = None,
                **overrides) -> IndexConfig:
    """Arguments from a preset, with dotted overrides like {"subsets.K": 400, "operators.R": 8}.

    With `n_docs` (the documents the run will index) and no explicit "subsets.K", a preset K larger
    than 0.6 * n_docs is lowered to that (deterministic, so a re-run builds the same config)."""
    p = preset(preset_name)
    if n_docs is not None and "subsets.K" not in overrides:
        K = max(2, int(SMALL_CORPUS_K_FRACTION * n_docs))
        if p["subsets"].K > K:
            logger.info("corpus has %d documents: preset %r K=%d lowered to K=%d", n_docs, preset_name, p["subsets"].K, K)
            p["subsets"] = type(p["subsets"]).from_dict({**p["subsets"].to_dict(), "K": K, "S": min(p["subsets"].S, K)})
    for key, val in overrides.items():
        stage, _, name = key.partition(".")
        if stage not in p or not hasattr(p[stage], name):
            raise StrideError(f"unknown argument {key!r}")
        d = p[stage].to_dict()
        d[name] = val
        p[stage] = type(p[stage]).from_dict(d)
    return IndexConfig(corpus, str(Path(model).expanduser().resolve()), sorted(shards) if shards else None, p["cache"], p["subsets"], p["operators"])


def count_documents(ws, corpus: str, shards=None) -> int:
    """Documents of a corpus (or of some of its shards) that a run would index."""
    from ..store.corpus import corpus_info, load_documents

    if shards is None:
        return int(corpus_info(ws, corpus)["n_docs"])
    return len(load_documents(ws, corpus, ["doc_id"], shards=list(shards)))


def _atomic_save(save_fn, path: Path):
    tmp = path.with_name(path.name + ".partial")
    save_fn(tmp)
    os.replace(tmp, path)


def _save_npy(path: Path, a: np.ndarray):
    with open(path, "wb") as fh:  # a file object: np.save would append .npy to the temporary name
        np.save(fh, a)


def _load_task(config: IndexConfig, device: str):
    from ..store.models import load_model_and_tokenizer
    from ..method.tasks import CausalLMTask

    model, tok = load_model_and_tokenizer(config.model, device=device)
    return CausalLMTask(model, tok, layer=config.cache.layer, max_tokens=config.cache.max_tokens)


def check_documents(config: IndexConfig, n_docs: int):
    """The corpus selection must hold documents, and at least K of them."""
    if n_docs == 0:
        raise RunError(f"corpus {config.corpus!r} has no documents in shards {config.shards}")
    if config.subsets.K > n_docs:
        raise StrideError(f"K={config.subsets.K} subsets is larger than the {n_docs} documents: lower K (e.g. --K {max(2, n_docs // 4)})")


def check_tokens(tokens) -> None:
    empty = tokens.doc_ids[tokens.lengths == 0]
    if len(empty):
        raise StrideError(f"documents {[int(d) for d in empty[:5]]} tokenize to nothing")


def prepare_tokens(ws, rdir: Path, config: IndexConfig, tokenizer, progress: bool = True):
    """The run's token store (runs/<run>/tokens, stride_core.store.tokens), built or resumed, checked."""
    from ..store.tokens import TokenizeArgs, begin_tokens, finish_tokens, tokenize_part

    targs = TokenizeArgs(max_tokens=config.cache.max_tokens)
    meta, doc_ids = begin_tokens(ws, config.corpus, config.shards, rdir / "tokens", targs)
    check_documents(config, len(doc_ids))
    if not meta.get("finished"):
        tokenize_part(ws, config.corpus, config.shards, rdir / "tokens", tokenizer, targs, progress=progress)
    tokens = finish_tokens(rdir / "tokens")
    check_tokens(tokens)
    return tokens


_REPORTED_MODELS: set = set()  # model folders (and model, corpus pairs) already reported

# What each index stage leaves in the run folder, in stage order; a stage is finished when its artifact is.
_STAGE_ARTIFACTS = {"tokens": ["tokens"], "cache": ["cache"], "subsets": ["subsets.safetensors"],
                    "operators": ["operators.safetensors", "operators_trace.json"]}


def _changed_arguments(old: dict, new: dict) -> list[str]:
    """Dotted names of the index arguments that differ ("model", "operators.lr", ...)."""
    out = []
    for k, v in new.items():
        o = old.get(k)
        if isinstance(v, dict) and isinstance(o, dict):
            out += [f"{k}.{n}" for n in sorted(set(v) | set(o)) if v.get(n) != o.get(n)]
        elif o != v:
            out.append(k)
    return out


def _stages_fed_by(changed: list[str]) -> list[str]:
    """The stages whose results depend on the changed arguments (each stage feeds the operators)."""
    stages = set()
    for name in changed:
        if name in ("corpus", "shards"):
            stages |= {"tokens", "cache", "subsets", "operators"}
        elif name in ("model", "cache.max_tokens"):
            stages |= {"tokens", "cache", "operators"}
        elif name.startswith("cache."):
            stages |= {"cache", "operators"}
        elif name.startswith("subsets."):
            stages |= {"subsets", "operators"}
        else:
            stages.add("operators")
    return [s for s in _STAGE_ARTIFACTS if s in stages]


def _stage_finished(rdir: Path, stage: str) -> bool:
    if stage in ("tokens", "cache"):
        try:
            return bool(json.loads((rdir / stage / "meta.json").read_text()).get("finished"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            return False
    return (rdir / _STAGE_ARTIFACTS[stage][0]).exists()


def begin_run(ws, run: str, config: IndexConfig, dev: str, overwrite: bool = False) -> tuple[Path, dict]:
    """Check the corpus and model, then create the run folder (args.json, provenance.json), or accept an
    existing one with the same arguments (raises RunError on different ones unless overwrite).
    A retry whose changed arguments feed only stages that never finished (a failed or interrupted run) is
    accepted: those stages restart, the finished ones are kept. Returns (run folder, corpus info)."""
    from ..store.corpus import corpus_info
    from ..store.models import check_model_dir, ignored_model_files, pairing_warnings, training_record

    ws.ensure()
    rdir = ws.run_dir(run)
    info = corpus_info(ws, config.corpus)  # raises on unknown corpus
    check_model_dir(config.model)
    # before anything is written: a run folder left by a wrong K would block the corrected retry
    check_documents(config, info["n_docs"] if config.shards is None else count_documents(ws, config.corpus, config.shards))
    if config.model not in _REPORTED_MODELS:  # once per process (`run` begins the run twice)
        _REPORTED_MODELS.add(config.model)
        for line in ignored_model_files(config.model):
            logger.warning("model %s: ignored %s", config.model, line)
    args_path = rdir / "args.json"
    if args_path.exists():
        try:
            old = json.loads(args_path.read_text()).get("index") or {}
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            old = {}
        new = config.to_dict()
        try:  # arguments added since the run was made read as their defaults
            old = IndexConfig.from_dict(old).to_dict() if old else old
        except Exception:  # noqa: BLE001 - an unreadable record is compared as it is (and differs)
            pass
        if old != new:
            changed = _changed_arguments(old, new)
            stages = _stages_fed_by(changed)
            done = [s for s in stages if _stage_finished(rdir, s)]
            if overwrite:
                shutil.rmtree(rdir)
            elif done or not old:
                raise RunError(f"run {run!r} exists with different arguments ({', '.join(changed)}) and its finished stage(s) "
                               f"{', '.join(done) or 'unknown'} depend on them: choose another --run or pass --overwrite")
            else:
                # A failed or interrupted run retried with corrected inputs: only stages that never finished
                # depend on what changed, so their partial artifacts go and the finished ones are kept.
                logger.info("run %s: arguments %s changed; restarting the unfinished stage(s) %s", run, ", ".join(changed),
                            ", ".join(stages))
                for st in stages:
                    for name in _STAGE_ARTIFACTS[st]:
                        target = rdir / name
                        if target.is_dir():
                            shutil.rmtree(target)
                        elif target.exists():
                            target.unlink()
    rdir.mkdir(parents=True, exist_ok=True)
    args_path.write_text(json.dumps({"run": run, "index": config.to_dict()}, indent=1))
    # A model trained on another corpus, or on part of this one, cannot have learned from the other documents:
    # said in the log and kept in provenance.json (the Runs page shows it), never an error (any pairing is legal).
    pairing = pairing_warnings(training_record(config.model), config.corpus, info["n_docs"])
    if (config.model, config.corpus) not in _REPORTED_MODELS:  # once per process, as above
        _REPORTED_MODELS.add((config.model, config.corpus))
        for w in pairing:
            logger.warning("model/corpus pairing: %s", w)
    (rdir / "provenance.json").write_text(json.dumps({**provenance(dev), "pairing_warnings": pairing}, indent=1))
    return rdir, info


def ensure_design(rdir: Path, config: IndexConfig, doc_ids: np.ndarray):
    """The run's subset design: loaded (checked against doc_ids) or drawn and saved."""
    from ..method.subsets import SubsetDesign

    sub_path = rdir / "subsets.safetensors"
    if sub_path.exists():
        return SubsetDesign.load(sub_path, doc_ids)
    design = SubsetDesign.stacked(doc_ids, config.subsets.K, config.subsets.S, config.subsets.seed, config.subsets.designs)
    _atomic_save(design.save, sub_path)
    return design


def index(ws, run: str, config: IndexConfig, device: str = "auto", overwrite: bool = False, progress: bool = True,
          reporter: Reporter | None = None) -> Path:
    """Cache activations, design subsets, train operators. Returns the run folder.

    Holds the run's lock throughout (a concurrent index or attribute of the run waits). Without a
    `reporter`, status.json ends `done`, or `failed` with the error (`cancelled` on Ctrl-C)."""
    from ..store.locks import run_lock
    from ..store.models import resolve_device

    dev = resolve_device(device)
    with run_lock(ws.run_dir(run)):
        rdir, info = begin_run(ws, run, config, dev, overwrite)
        if reporter is not None:
            _index_stages(ws, rdir, run, config, dev, info, progress, reporter)
        else:
            with Reporter(rdir, run).finishing() as rep:
                _index_stages(ws, rdir, run, config, dev, info, progress, rep)
    return rdir


def _index_stages(ws, rdir: Path, run: str, config: IndexConfig, dev: str, info: dict, progress: bool, rep: Reporter) -> None:
    from ..method.activations import build_cache
    from ..method.estimator import StrideEstimator

    # 1. activation cache ------------------------------------------------------------------
    rep.stage("load model", f"{config.model} on {dev}")
    task = _load_task(config, dev)
    rep.stage("cache activations", f"corpus {config.corpus} ({info['n_docs']} documents)")
    # Documents are streamed from DuckDB in chunks and tokenized once into an on-disk token store, so
    # host memory does not grow with the corpus text; the cache reads each batch's ids from it.
    tokens = prepare_tokens(ws, rdir, config, task.tokenizer, progress=progress)
    t0 = time.time()
    cache = build_cache(rdir / "cache", task, tokens.items(), tokens.lengths, tokens.doc_ids, config.cache.batch_size,
                        config.cache.dtype, progress, on_progress=lambda f: rep.update(f))
    logger.info("activation cache: %d documents, %d tokens in %.1fs", cache.n_docs, cache.n_tokens, time.time() - t0)

    # 2. subsets ----------------------------------------------------------------------------
    design = ensure_design(rdir, config, cache.doc_ids)

    # 3. operators + reference ------------------------------------------------------------
    op_path = rdir / "operators.safetensors"
    if not op_path.exists():
        rep.stage("train operators", f"K={config.subsets.K} subsets x {config.subsets.designs} design(s), R={config.operators.R}, "
                                     f"{config.operators.steps} steps")
        est = StrideEstimator(task.head, config.subsets, config.operators, device=dev, progress=progress)
        est.fit(cache, design=design, on_progress=lambda f, **m: rep.update(f, **m))
        _atomic_save(lambda p: p.write_text(json.dumps(est.trace_)), rdir / "operators_trace.json")
        _atomic_save(est.save, op_path)  # last: its presence marks the index finished
    rep.stage("indexed", "index complete")


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


def load_run(ws, run: str) -> tuple[Path, IndexConfig]:
    rdir = ws.run_dir(run)
    if not (rdir / "args.json").exists():
        known = sorted(d.name for d in ws.runs_dir.glob("*") if (d / "args.json").exists()) if ws.runs_dir.exists() else []
        raise RunError(f"unknown run {run!r} in {ws.root} (known: {known or 'none'}); create it with `stride index`")
    try:
        config = IndexConfig.from_dict(json.loads((rdir / "args.json").read_text())["index"])
    except StrideError as exc:  # e.g. `--steps 0` or `--lr inf`, accepted by versions before the argument checks
        raise RunError(f"run {run!r} was indexed with arguments that are refused now ({exc}), so its index is not usable: "
                       f"re-index it with corrected arguments and --overwrite") from exc
    except (KeyError, TypeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunError(f"{rdir / 'args.json'} is damaged ({type(exc).__name__}: {exc}): re-index the run with --overwrite") from exc
    if not (rdir / "operators.safetensors").exists():
        raise RunError(f"run {run!r} is not fully indexed (no operators yet): re-run `stride index --run {run}` to resume")
    return rdir, config


def _generate(task, prompts: list[dict], args: AttributeArgs | int) -> list[dict]:
    """Each prompt with its token ids and the continuation to attribute: the prompt's `completion` when it
    has one (teacher forcing: "why did the model say X?"), else the model's greedy continuation with the
    repetition settings of `args` (an int is taken as max_new_tokens with the default settings).

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
                                         do_sample=False, repetition_penalty=args.repetition_penalty,
                                         no_repeat_ngram_size=args.no_repeat_ngram_size,
                                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
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


@dataclass
class OpenRun:
    """A finished index loaded for queries: the model task, the activation cache, the subset design
    and the fitted estimator. `influence(items)` -> (Q, N) scores in cache (doc_ids) order."""

    rdir: Path
    config: IndexConfig
    task: object
    cache: object
    design: object
    estimator: object

    @property
    def doc_ids(self) -> np.ndarray:
        return np.asarray(self.cache.doc_ids)

    def influence(self, items: list[tuple[list[int], int]], names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """items: (token ids, first scored position); names: their ids, for error messages. Returns W (Q, N),
        y (Q, K), base losses (Q,). Raises RunError when a measurement is not finite or all are 0."""
        from ..method.activations import features_in_memory

        qfeat = features_in_memory(self.task, items)
        y, base = self.estimator.measure(qfeat)
        check_measurements(self.rdir.name, y, names)
        rec = self.estimator.recover(y)
        return rec.influence_, y, base

    def generic_component(self, args: AttributeArgs, save: bool = True):
        """The query-independent component c (K_total,) of y for this run and generation setting
        (stride_core.method.generic), loaded from runs/<run>/generic.safetensors or measured on the run's
        reference queries (seeded corpus documents continued like user prompts) and saved."""
        from ..method.activations import features_in_memory
        from ..method.generic import GENERIC_FILE, GenericComponent, masked_mean, reference_prompts
        from ..store.tokens import TokenStore

        key = {"n": args.n_reference_queries, "seed": self.config.subsets.seed, "prompt_tokens": REFERENCE_PROMPT_TOKENS,
               "max_new_tokens": args.max_new_tokens, "repetition_penalty": args.repetition_penalty,
               "no_repeat_ngram_size": args.no_repeat_ngram_size, "center": args.center, "loss_on": args.loss_on}
        path = self.rdir / GENERIC_FILE
        found = GenericComponent.load(path, key)
        if found is not None:
            return found
        rows, ids = reference_prompts(TokenStore.open(self.rdir / "tokens"), args.n_reference_queries, self.config.subsets.seed,
                                      REFERENCE_PROMPT_TOKENS)
        refs = [{"query_id": f"ref{int(r)}", "prompt": None, "prompt_ids": i} for r, i in zip(rows, ids)]
        y_ref, _ = self.estimator.measure(features_in_memory(self.task, query_items(_generate(self.task, refs, args), args.loss_on)))
        comp = GenericComponent(masked_mean(y_ref, self.design.members[rows]).astype(np.float32), rows, key)
        if save:
            _atomic_save(comp.save, path)
        logger.info("generic component measured on %d reference queries", len(rows))
        return comp

    def encode(self, texts: list[str], names: list[str]) -> list[tuple[list[int], int]]:
        """Token items scoring every token of each text (an evaluation item used as a query); texts longer
        than the context keep their first max_tokens tokens, with a warning naming them."""
        tok, budget = self.task.tokenizer, self.task.max_tokens - 1
        out, cut = [], []
        for name, text in zip(names, texts):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            if len(ids) < 1:
                raise InputError(f"item {name!r} tokenizes to nothing")
            if len(ids) > budget:
                cut.append(str(name))
                ids = ids[:budget]
            out.append((ids, 0))
        if cut:
            logger.warning("%d items longer than the context were truncated to their first %d tokens: %s", len(cut), budget,
                           ", ".join(cut[:20]) + (" ..." if len(cut) > 20 else ""))
        return out


def check_measurements(run: str, y: np.ndarray, names: list[str] | None = None) -> None:
    """Measurements that cannot be recovered from: non-finite ones, or all 0 (inert operators: nothing to score)."""
    names = names or [f"#{i}" for i in range(len(y))]
    bad = [str(names[i]) for i in np.flatnonzero(~np.isfinite(y).all(axis=1))]
    if bad:
        raise RunError(f"run {run!r}: the measurements of {', '.join(bad[:10])} are not finite (nan or inf); the run's operators "
                       "or model produce non-finite losses on them: re-index the run (--overwrite) with a lower --lr")
    if y.size and not np.abs(y).max() > 0:
        raise RunError(f"run {run!r} has no prompts to score: every measurement is 0, so the operators change no loss "
                       "(untrained operators?); re-index with --steps >= 1 and --overwrite")


def check_operators(run: str, estimator) -> None:
    """A saved index must hold finite, trained operators: nan ones (diverged training) or all-zero ones
    (`--steps 0` in runs indexed before steps >= 1 was enforced) would rank nothing, or garbage."""
    import torch

    for m in estimator._members():
        bad = [n for n, p in m.ops.named_parameters() if not torch.isfinite(p).all()]
        if m.reference is not None and not np.isfinite(m.reference).all():
            bad.append("reference")
        if bad:
            raise RunError(f"run {run!r}: its operators hold nan or inf ({', '.join(bad)}): training diverged; re-index it "
                           "with a lower --lr (or loss weights) and --overwrite")
        if not m.ops.A.detach().abs().max() > 0:
            raise RunError(f"run {run!r} has untrained operators (every steering matrix is 0, as `--steps 0` leaves them): "
                           "re-index it with --steps >= 1 and --overwrite")


def open_run(ws, run: str, args: AttributeArgs | None = None) -> OpenRun:
    """Load a finished index (raises RunError naming the missing stage otherwise)."""
    from ..method.activations import FeatureCache
    from ..method.estimator import StrideEstimator
    from ..store.models import resolve_device
    from ..method.subsets import SubsetDesign

    args = args or AttributeArgs()
    rdir, config = load_run(ws, run)
    dev = resolve_device(args.device)
    task = _load_task(config, dev)
    cache = FeatureCache.open(rdir / "cache")
    design = SubsetDesign.load(rdir / "subsets.safetensors", cache.doc_ids)
    est = StrideEstimator(task.head, config.subsets, config.operators, center=args.center, alpha=args.alpha,
                          alpha_ratio=args.alpha_ratio, lambda_rule=args.lambda_rule, positive=args.positive, device=dev).load(rdir / "operators.safetensors", design)
    check_operators(run, est)
    return OpenRun(rdir, config, task, cache, design, est)


def top_nonzero(w: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the k largest positive entries of w (N,), best first, and of the k most negative,
    worst first; ties by document order (helpful) or reverse document order (harmful), as a stable
    descending sort would give. Sorts only the non-zero entries: the Lasso's w is sparse, N can be 1M."""
    pos, neg = np.flatnonzero(w > 0), np.flatnonzero(w < 0)
    return pos[np.lexsort((pos, -w[pos]))][:k], neg[np.lexsort((-neg, w[neg]))][:k]


def attribute(ws, run: str, prompts: list[dict] | str | Path, args: AttributeArgs | None = None, out: str | Path | None = None,
              progress: bool = True, reporter: Reporter | None = None) -> pd.DataFrame:
    """Continuation + ranked helpful/harmful documents per prompt. Returns the rows (also written to
    runs/<run>/attributions.parquet, OUT when given, and the workspace DuckDB).

    Holds the run's lock (concurrent calls on one run wait for each other). Without a `reporter`,
    status.json ends `done`, or `failed` with the error; input errors found before the run is opened
    (prompts, --out, an unknown or unusable run) leave it untouched."""
    from ..store.locks import run_lock

    args = args or AttributeArgs()
    if out is not None and Path(out).suffix.lower() not in (".parquet", ".jsonl", ".csv"):
        raise InputError(f"--out {out}: use a .parquet, .jsonl or .csv file name")
    prompts = read_prompts(prompts) if isinstance(prompts, (str, Path)) else list(prompts)
    if not prompts:
        raise InputError("no prompts given")
    with run_lock(ws.run_dir(run)):
        opened = open_run(ws, run, args)
        sync_attributions(ws, run)  # a kill between the two writes of an earlier call left the DuckDB copy stale
        if reporter is not None:
            return _attribute(ws, run, opened, prompts, args, out, reporter)
        with Reporter(opened.rdir, run).finishing() as rep:
            return _attribute(ws, run, opened, prompts, args, out, rep)


def _attribute(ws, run: str, opened: OpenRun, prompts: list[dict], args: AttributeArgs, out, rep: Reporter) -> pd.DataFrame:
    from ..method.activations import features_in_memory

    config, task, cache = opened.config, opened.task, opened.cache
    rep.stage("attribute", f"{len(prompts)} prompts")
    gens = _generate(task, prompts, args)
    rep.update(0.2, "measuring")
    y, base = opened.estimator.measure(features_in_memory(task, query_items(gens, args.loss_on)))  # (Q, K), (Q,)
    check_measurements(run, y, [g["query_id"] for g in gens])
    generic = None
    if args.ranking == "specific":
        rep.update(0.4, "generic component (reference queries)")
        generic = opened.generic_component(args)
    rep.update(0.6, "recovering")
    W = opened.estimator.recover(y if generic is None else remove_generic(y, generic.y_mean)).influence_  # (Q, N)
    k = min(args.top_k, W.shape[1])
    lexical = None
    if args.method == "stride+lexical":
        from ..store.text import tfidf_similarity

        rep.update(0.7, "lexical similarity (TF-IDF over the corpus)")
        lexical = tfidf_similarity(ws, config.corpus, cache.doc_ids, [query_text(g, args.loss_on) for g in gens],
                                   shards=config.shards)  # (Q, N)
    rows = ranked_rows(gens, W, base, cache.doc_ids, k, lexical)
    ranked = {r["query_id"] for r in rows}
    unranked = [g["query_id"] for g in gens if g["query_id"] not in ranked]
    if unranked:
        logger.warning("%d of %d prompts have no document with a non-zero recovered effect (the Lasso kept none): %s",
                       len(unranked), len(gens), ", ".join(unranked[:20]) + (" ..." if len(unranked) > 20 else ""))
    df = write_attributions(ws, run, config, rows, y, out)
    if generic is not None:
        write_generic(ws, run, config, opened.estimator.recover(generic.y_mean[None]).influence_[0], cache.doc_ids, k)
    df.attrs.update(n_prompts=len(gens), unranked=unranked)
    rep.stage("attributed", f"{len(prompts)} prompts attributed")
    return df


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


def ranked_rows(gens: list[dict], W: np.ndarray, base: np.ndarray, doc_ids, k: int, lexical: np.ndarray | None = None) -> list[dict]:
    """The attributions rows: each prompt's k most helpful and k most harmful non-zero documents. With
    `lexical` (Q, N) (method stride+lexical) the helpful ones are the k largest z(W) + z(lexical) (any
    document, best first) and the rows carry the cosine and the z-sum; `score` is always STRIDE's."""
    from ..store.text import zscore_rows

    rows = []
    hybrid = None if lexical is None else zscore_rows(W) + zscore_rows(lexical)  # (Q, N)
    for qi, g in enumerate(gens):
        helpful, harmful = top_nonzero(W[qi], k)
        if hybrid is not None:
            helpful = np.lexsort((np.arange(W.shape[1]), -hybrid[qi]))[:k]
        for direction, idx in (("helpful", helpful), ("harmful", harmful)):
            for rank, j in enumerate(idx, 1):
                row = {"query_id": g["query_id"], "prompt": g["prompt"], "continuation": g["continuation"], "direction": direction,
                       "rank": rank, "doc_id": int(doc_ids[j]), "score": float(W[qi, j]), "query_loss": float(base[qi]),
                       "prompt_used": g.get("prompt_used", g["prompt"]), "truncated": bool(g.get("truncated", False))}
                if hybrid is not None:
                    row.update(lexical=float(lexical[qi, j]), hybrid_z=float(hybrid[qi, j]))
                rows.append(row)
    return rows


def write_generic(ws, run: str, config: IndexConfig, w: np.ndarray, doc_ids, k: int) -> pd.DataFrame:
    """The "helps every prompt" view: Lasso of the generic component, top k per direction, with document
    metadata, to runs/<run>/generic.parquet."""
    from ..store.corpus import corpus_info, load_documents
    from ..method.generic import GENERIC_TABLE

    helpful, harmful = top_nonzero(w, k)
    df = pd.DataFrame([{"direction": d, "rank": r, "doc_id": int(doc_ids[j]), "score": float(w[j])}
                       for d, idx in (("helpful", helpful), ("harmful", harmful)) for r, j in enumerate(idx, 1)],
                      columns=["direction", "rank", "doc_id", "score"])
    meta_cols = corpus_info(ws, config.corpus)["metadata_columns"]
    if len(df):
        docs = load_documents(ws, config.corpus, columns=["doc_id", "text", *meta_cols], doc_ids=sorted(set(df["doc_id"])))
        docs["snippet"] = docs["text"].map(lambda t: " ".join(t.split())[:300])
        df = df.merge(docs.drop(columns=["text"]), on="doc_id", how="left")
    _atomic_save(lambda p: df.to_parquet(p, index=False), ws.run_dir(run) / GENERIC_TABLE)
    return df


def write_attributions(ws, run: str, config: IndexConfig, rows: list[dict], y: np.ndarray, out=None) -> pd.DataFrame:
    """Ranked rows -> the attributions table (document metadata and snippet joined), written to
    runs/<run>/attributions.parquet, OUT when given and the workspace DuckDB; y (Q, K) is kept beside it.

    attributions.parquet is the one source of truth, replaced atomically under the run's lock; the
    DuckDB rows are derived from it (sync_attributions), so the two can only differ until the next sync."""
    from ..store.corpus import corpus_info, load_documents
    from ..store.locks import run_lock

    rdir = ws.run_dir(run)
    hybrid_cols = HYBRID_COLUMNS if rows and "hybrid_z" in rows[0] else []
    df = pd.DataFrame(rows, columns=ATTRIBUTION_COLUMNS[:-1] + ["query_loss", *PROMPT_USE_COLUMNS, *hybrid_cols])
    meta_cols = corpus_info(ws, config.corpus)["metadata_columns"]
    if len(df):
        docs = load_documents(ws, config.corpus, columns=["doc_id", "text", *meta_cols], doc_ids=sorted(set(df["doc_id"])))
        docs["snippet"] = docs["text"].map(lambda t: " ".join(t.split())[:300])
        df = df.merge(docs.drop(columns=["text"]), on="doc_id", how="left")
    else:
        df["snippet"] = pd.Series(dtype=str)
        for c in meta_cols:
            df[c] = pd.Series(dtype=str)
    df = df[ATTRIBUTION_COLUMNS + ["query_loss", *PROMPT_USE_COLUMNS, *hybrid_cols, *meta_cols]]
    with run_lock(rdir):
        _atomic_save(lambda p: _save_npy(p, y), rdir / "last_measurements.npy")  # per-query measurements, for auditability
        _atomic_save(lambda p: df.to_parquet(p, index=False), rdir / "attributions.parquet")
        sync_attributions(ws, run, log_repair=False)
    if out is not None:
        write_table(df, Path(out))
    return df


def write_table(df: pd.DataFrame, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    suf = path.suffix.lower()
    if suf == ".parquet":
        _atomic_save(lambda p: df.to_parquet(p, index=False), path)
    elif suf == ".jsonl":
        _atomic_save(lambda p: df.to_json(p, orient="records", lines=True, force_ascii=False), path)
    elif suf == ".csv":
        _atomic_save(lambda p: df.to_csv(p, index=False), path)
    else:
        raise InputError(f"{path}: use a .parquet, .jsonl or .csv file name")


def sync_attributions(ws, run: str, log_repair: bool = True) -> bool:
    """Derive run `run`'s rows of the DuckDB `attributions` table from runs/<run>/attributions.parquet, the
    source of truth (no file: no rows). The sha1 of the file they were derived from is recorded in
    `attribution_sources` in the same transaction, so an up-to-date copy is left alone and a copy left
    stale (a kill between the file and the database write) is rebuilt. Returns whether it wrote."""
    import hashlib

    path = ws.run_dir(run) / "attributions.parquet"
    digest = hashlib.sha1(path.read_bytes()).hexdigest() if path.exists() else None
    if not ws.db_path.exists():
        if digest is None:
            return False
    else:  # the common case, an up-to-date copy, needs only a read-only look
        with ws.connect(read_only=True) as con:
            has = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'attribution_sources'").fetchone()[0]
            recorded = con.execute("SELECT sha1 FROM attribution_sources WHERE run = ?", [run]).fetchone() if has else None
        if recorded is not None and recorded[0] == digest:
            return False
    with ws.connect() as con:
        con.execute("""CREATE TABLE IF NOT EXISTS attributions (run VARCHAR, query_id VARCHAR, prompt VARCHAR, continuation VARCHAR,
                       direction VARCHAR, rank INTEGER, doc_id BIGINT, score DOUBLE, snippet VARCHAR, query_loss DOUBLE, metadata VARCHAR)""")
        con.execute("CREATE TABLE IF NOT EXISTS attribution_sources (run VARCHAR PRIMARY KEY, sha1 VARCHAR, n_rows BIGINT)")
        recorded = con.execute("SELECT sha1 FROM attribution_sources WHERE run = ?", [run]).fetchone()
        if recorded is not None and recorded[0] == digest:
            return False
        df = pd.read_parquet(path) if digest else pd.DataFrame(columns=ATTRIBUTION_COLUMNS + ["query_loss"])
        fixed = ATTRIBUTION_COLUMNS + ["query_loss"]
        meta = [c for c in df.columns if c not in fixed and c not in PROMPT_USE_COLUMNS and c not in HYBRID_COLUMNS]
        rows = df[fixed].copy()
        rows.insert(0, "run", run)
        rows["metadata"] = df[meta].apply(lambda r: json.dumps({k: (None if pd.isna(v) else v) for k, v in r.items()}, default=str), axis=1) if meta and len(df) else "{}"
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute("DELETE FROM attributions WHERE run = ?", [run])
            if len(rows):
                con.register("new_rows", rows)
                con.execute("INSERT INTO attributions SELECT run, query_id, prompt, continuation, direction, rank, doc_id, score, snippet, query_loss, metadata FROM new_rows")
                con.unregister("new_rows")
            con.execute("DELETE FROM attribution_sources WHERE run = ?", [run])
            con.execute("INSERT INTO attribution_sources VALUES (?, ?, ?)", [run, digest, len(rows)])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    if recorded is not None and log_repair:
        logger.warning("run %s: the DuckDB attribution rows were out of date with attributions.parquet; rebuilt them", run)
    return True


def run_all(ws, run: str, config: IndexConfig, prompts, attr_args: AttributeArgs | None = None, device: str = "auto",
            overwrite: bool = False, progress: bool = True, out=None) -> pd.DataFrame:
    """index + attribute in one job, with one status file (what the dashboard starts), under the run's lock."""
    from ..store.locks import run_lock

    from ..store.models import resolve_device

    rdir = ws.run_dir(run)
    with run_lock(rdir):
        # Inputs refused here (prompts, different arguments, a K larger than the corpus) leave the status of
        # an existing run as it was: a refused command must not show a finished run as failed. A job the
        # dashboard queued for a new run gets the error in its status.
        try:
            if out is not None and Path(out).suffix.lower() not in (".parquet", ".jsonl", ".csv"):
                raise InputError(f"--out {out}: use a .parquet, .jsonl or .csv file name")
            prompts = read_prompts(prompts) if isinstance(prompts, (str, Path)) else list(prompts)
            begin_run(ws, run, config, resolve_device(device), overwrite)
        except StrideError as exc:
            prev = read_status(rdir)
            if prev is not None and prev.state == "queued":
                Reporter(rdir, run).finish("failed", str(exc))
            raise
        with Reporter(rdir, run).finishing() as rep:
            index(ws, run, config, device=device, overwrite=overwrite, progress=progress, reporter=rep)
            attr_args = attr_args or AttributeArgs(device=device)
            return attribute(ws, run, prompts, attr_args, out=out, progress=progress, reporter=rep)


def run_state(ws, run: str) -> str | None:
    st = read_status(ws.run_dir(run))
    return st.state if st else None
