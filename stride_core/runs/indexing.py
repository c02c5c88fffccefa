"""`index`: tokens, the activation cache, the subset design and the operators of a run, each stage resumable
(an artifact that exists is skipped; changed arguments restart only the stages they feed).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from ..errors import RunError, StrideError
from .progress import Reporter
from .config import IndexConfig, check_documents, count_documents, provenance
from .run_files import atomic_save

logger = logging.getLogger(__name__)


def load_task(config: IndexConfig, device: str):
    from ..store.models import load_model_and_tokenizer
    from ..method.tasks import CausalLMTask

    model, tok = load_model_and_tokenizer(config.model, device=device)
    return CausalLMTask(model, tok, layer=config.cache.layer, max_tokens=config.cache.max_tokens)


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
    atomic_save(design.save, sub_path)
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
    task = load_task(config, dev)
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
        atomic_save(lambda p: p.write_text(json.dumps(est.trace_)), rdir / "operators_trace.json")
        atomic_save(est.save, op_path)  # last: its presence marks the index finished
    rep.stage("indexed", "index complete")


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
