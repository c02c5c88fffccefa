"""`stride bench scale`: how STRIDE's index and query costs grow with the number of documents.

For each size N, a synthetic-token corpus (N documents of uniformly random token ids, lengths uniform
in [doc_tokens/2, doc_tokens]) is run through the product code on a randomly initialised model of the
built-in family (GPT-2 from `tiny_model.build_config`; nothing is downloaded or trained — speed does
not depend on the weights):

- floor:      a plain forward pass of the transformer body over the same length-sorted batches (no
              hooks, nothing copied off the device, outputs discarded): the least any method pays;
- tokens:     writing the synthetic token store (stride_core.store.tokens), chunk by chunk;
- cache:      `activations.build_cache` (hooks, fp16 memmaps, done mask): tokens/s and its ratio to
              the floor's tokens/s (issue target: >= 1/3);
- subsets:    `SubsetDesign.random`;
- operators:  `StrideEstimator.fit` (operator training + reference pass) and saving it;
- query:      against the saved index reopened from disk (as `stride attribute` does), for `prompts` new
              prompts of prompt_tokens + continuation_tokens random tokens: the forward pass for the
              query features, measurement over all K subsets, recovery (Lasso with the automatic
              lambda) + top-k, and separately greedy generation of the continuation. Medians after
              one warm-up prompt.

Peak memory is recorded per stage: the process's anonymous resident memory (what it allocated itself:
the bound that matters) and its full RSS (which also counts resident pages of the memory-mapped
cache, reclaimable by the kernel), both absolute, and torch's peak allocated CUDA memory. Each
size runs in a fresh process (spawn) unless `in_process`, so one size's memory does not leak into the
next. `DIR/results.json` holds the arguments, the machine and one row per size; a table is printed.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import StrideError

logger = logging.getLogger(__name__)


@dataclass
class ScaleArgs:
    """Sizes, synthetic documents, the model, the STRIDE arguments and the query timing."""

    sizes: tuple = (10_000, 100_000, 1_000_000)
    doc_tokens: int = 64  # longest document; lengths are uniform in [doc_tokens // 2, doc_tokens]
    # model: the built-in GPT-2 family, random weights
    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 2
    vocab_size: int = 1024
    batch_size: int = 64  # documents per forward batch (cache and floor alike)
    # STRIDE (defaults: the product's default preset)
    K: int = 1000
    S: int = 10
    R: int = 16
    steps: int = 400
    subset_batch: int = 250
    top_k: int = 50
    # queries
    prompts: int = 5
    prompt_tokens: int = 16
    continuation_tokens: int = 16
    device: str = "auto"
    threads: int | None = None  # torch threads (None: torch's default)
    in_process: bool = False
    keep: bool = False  # keep each size's token store, cache and operators under DIR/work
    seed: int = 0

    def __post_init__(self):
        self.sizes = tuple(int(s) for s in self.sizes)
        if not self.sizes or min(self.sizes) < 2:
            raise StrideError("sizes must be a non-empty list of document counts >= 2")
        if self.K < 2 or self.K > min(self.sizes):
            raise StrideError(f"K={self.K} must be in 2..{min(self.sizes)} (the smallest size): lower --K or raise --sizes")
        if not 1 <= self.S <= self.K:
            raise StrideError("S must be in 1..K")
        if self.doc_tokens < 2 or self.prompt_tokens < 1 or self.continuation_tokens < 1:
            raise StrideError("doc_tokens >= 2, prompt_tokens >= 1 and continuation_tokens >= 1")
        if self.doc_tokens + 1 > 512 or self.prompt_tokens + self.continuation_tokens + 1 > 512:
            raise StrideError("documents and prompts must fit the model's 512-token context")
        if self.n_embd % self.n_head or self.n_layer < 1 or self.vocab_size < 8:
            raise StrideError("n_embd must be divisible by n_head, n_layer >= 1, vocab_size >= 8")
        if self.batch_size < 1 or self.R < 1 or self.steps < 0 or self.subset_batch < 1 or self.top_k < 1:
            raise StrideError("batch_size, R, subset_batch and top_k must be >= 1, steps >= 0")
        if self.prompts < 1:
            raise StrideError("prompts must be >= 1")
        if self.threads is not None and self.threads < 1:
            raise StrideError("threads must be >= 1")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise StrideError("device must be auto, cpu or cuda")


class _Tok:
    """The attributes CausalLMTask reads from a tokenizer (synthetic corpora are token ids already)."""

    bos_token_id = eos_token_id = pad_token_id = 0


def _model(args: ScaleArgs, device: str):
    import torch
    from transformers import GPT2LMHeadModel

    from ..store.tiny_model import TinyModelArgs, build_config

    targs = TinyModelArgs(vocab_size=args.vocab_size, n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head,
                          block_size=max(8, args.doc_tokens))
    torch.manual_seed(args.seed)
    model = GPT2LMHeadModel(build_config(targs, args.vocab_size, 0)).eval().to(device)
    return model, sum(p.numel() for p in model.parameters())


def _synthetic_chunks(N: int, args: ScaleArgs, chunk: int = 65_536):
    rng = np.random.default_rng(args.seed + N)
    for a in range(0, N, chunk):
        n = min(chunk, N - a)
        lengths = rng.integers(max(1, args.doc_tokens // 2), args.doc_tokens + 1, n)
        yield lengths, rng.integers(1, args.vocab_size, int(lengths.sum()), dtype=np.int32)


def _proc_mem_mb() -> tuple[float, float]:
    """(RSS, anonymous RSS) of this process in MB. Anonymous memory is what the process itself
    allocated; RSS also counts resident pages of memory-mapped files (the activation cache), which the
    kernel can drop. Falls back to ru_maxrss for both where /proc is missing."""
    try:
        vals = {}
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "RssAnon:")):
                    key, kb = line.split()[:2]
                    vals[key] = int(kb) / 1024
        return vals["VmRSS:"], vals.get("RssAnon:", vals["VmRSS:"])
    except (OSError, KeyError, ValueError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return peak, peak


class _Stage:
    """Times a block and records its peak host memory (RSS and anonymous RSS, sampled every 10 ms)
    and torch's peak allocated CUDA memory into `row["stages"][name]`."""

    def __init__(self, row: dict, name: str, device: str):
        self.row, self.name, self.device = row, name, device

    def _sample(self):
        while not self._stop.wait(0.01):
            self._update()

    def _update(self):
        rss, anon = _proc_mem_mb()
        self.peak_rss, self.peak_anon = max(self.peak_rss, rss), max(self.peak_anon, anon)

    def __enter__(self):
        import threading

        self.cuda = str(self.device).startswith("cuda")
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.start_rss, self.start_anon = _proc_mem_mb()
        self.peak_rss, self.peak_anon = self.start_rss, self.start_anon
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        gpu = 0.0
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            gpu = torch.cuda.max_memory_allocated() / 2**20
        seconds = time.perf_counter() - self.t0
        self._stop.set()
        self._thread.join()
        self._update()
        self.row["stages"][self.name] = {"seconds": round(seconds, 4), "peak_rss_mb": round(self.peak_rss, 1),
                                         "peak_anon_mb": round(self.peak_anon, 1),
                                         "anon_above_start_mb": round(self.peak_anon - self.start_anon, 1),
                                         "peak_gpu_mb": round(gpu, 1)}
        logger.info("N=%d %s: %.2fs", self.row["n_docs"], self.name, seconds)
        return False


def _floor(model, store, batch_size: int, device: str) -> None:
    """The model body over the store's documents in the cache's batches (length-sorted), nothing kept."""
    import torch

    lengths = store.lengths
    order = np.argsort(lengths, kind="stable")
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            chunk = order[s:s + batch_size]
            seqs = [[0, *store.tokens(int(i))] for i in chunk]
            L = max(len(q) for q in seqs)
            ids = torch.zeros((len(seqs), L), dtype=torch.long)
            mask = torch.zeros((len(seqs), L), dtype=torch.long)
            for j, q in enumerate(seqs):
                ids[j, :len(q)] = torch.tensor(q)
                mask[j, :len(q)] = 1
            model.base_model(input_ids=ids.to(device), attention_mask=mask.to(device))


def run_size(N: int, args: ScaleArgs, work: Path) -> dict:
    """Every stage for one corpus size; returns the row for results.json."""
    import torch

    from ..method.activations import FeatureCache, build_cache, features_in_memory
    from ..method.arguments import OperatorArgs, SubsetArgs
    from ..runs.distributed import top_rows
    from ..method.estimator import StrideEstimator
    from ..store.models import resolve_device
    from ..method.subsets import SubsetDesign
    from ..method.tasks import CausalLMTask
    from ..store.tokens import write_store

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    work = Path(work)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    row: dict = {"n_docs": N, "stages": {}}
    model, n_params = _model(args, dev)
    task = CausalLMTask(model, _Tok(), max_tokens=args.doc_tokens)
    row.update(n_params=n_params, device=dev, threads=torch.get_num_threads())

    with _Stage(row, "tokens", dev):
        store = write_store(work / "tokens", np.arange(N), _synthetic_chunks(N, args), synthetic=True)
    T = store.n_tokens
    row["n_tokens"] = T
    with _Stage(row, "floor", dev):
        _floor(model, store, args.batch_size, dev)
    with _Stage(row, "cache", dev):
        cache = build_cache(work / "cache", task, store.items(), store.lengths, store.doc_ids, args.batch_size,
                            "float16", progress=False)
    row["cache_disk_mb"] = round(sum(f.stat().st_size for f in (work / "cache").iterdir()) / 2**20, 1)
    with _Stage(row, "subsets", dev):
        design = SubsetDesign.random(cache.doc_ids, args.K, args.S, args.seed)
    oargs = OperatorArgs(R=args.R, steps=args.steps, subset_batch=args.subset_batch, seed=args.seed)
    sargs = SubsetArgs(K=args.K, S=args.S, seed=args.seed)
    with _Stage(row, "operators", dev):
        est = StrideEstimator(task.head, sargs, oargs, device=dev).fit(cache, design=design)
        est.save(work / "operators.safetensors")
    del est, cache

    # queries against the index reopened from disk ------------------------------------------------
    with _Stage(row, "open_index", dev):
        FeatureCache.open(work / "cache")  # opened (and checked) as `stride attribute` does; not read here
        est = StrideEstimator(task.head, sargs, oargs, device=dev).load(work / "operators.safetensors", design)
    rng = np.random.default_rng(args.seed + 1)
    P, C = args.prompt_tokens, args.continuation_tokens
    times: dict[str, list[float]] = {"generate": [], "features": [], "measure": [], "recovery": [], "prompt": []}
    sync = (lambda: torch.cuda.synchronize()) if dev.startswith("cuda") else (lambda: None)
    with _Stage(row, "query", dev):
        for q in range(args.prompts + 1):  # the first prompt warms up
            ids = rng.integers(1, args.vocab_size, P + C).tolist()
            sync()
            t0 = time.perf_counter()
            with torch.no_grad():
                inp = torch.tensor([[0, *ids[:P]]], device=dev)
                model.generate(inp, attention_mask=torch.ones_like(inp), max_new_tokens=C, min_new_tokens=C,
                               do_sample=False, pad_token_id=0)
            sync()
            t1 = time.perf_counter()
            qfeat = features_in_memory(task, [(ids, P)])
            sync()
            t2 = time.perf_counter()
            y, _ = est.measure(qfeat)
            sync()
            t3 = time.perf_counter()
            W = est.recover(y).influence_
            top_rows(W[0], args.top_k)
            sync()
            t4 = time.perf_counter()
            if q:
                for k, v in (("generate", t1 - t0), ("features", t2 - t1), ("measure", t3 - t2), ("recovery", t4 - t3),
                             ("prompt", t4 - t1)):
                    times[k].append(v)
    med = {k: statistics.median(v) for k, v in times.items()}
    st = row["stages"]
    floor_s, cache_s = st["floor"]["seconds"], st["cache"]["seconds"]
    row.update(
        floor_tokens_per_s=round(T / floor_s, 1) if floor_s else None,
        cache_tokens_per_s=round(T / cache_s, 1) if cache_s else None,
        cache_vs_floor=round(floor_s / cache_s, 3) if cache_s else None,
        operator_train_s=st["operators"]["seconds"],
        prompt_s=round(med["prompt"], 4), recovery_s=round(med["recovery"], 4), measure_s=round(med["measure"], 4),
        query_features_s=round(med["features"], 4), generate_s=round(med["generate"], 4),
        prompt_with_generation_s=round(med["prompt"] + med["generate"], 4),
        peak_rss_mb=max(s["peak_rss_mb"] for s in st.values()),
        peak_anon_mb=max(s["peak_anon_mb"] for s in st.values()),
        peak_gpu_mb=max(s["peak_gpu_mb"] for s in st.values()),
    )
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return row


def _child(N: int, args: dict, work: str, log_level: int) -> dict:
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    return run_size(N, ScaleArgs(**args), Path(work))


def machine(device: str) -> dict:
    import torch

    return {"host": platform.node(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "device": device,
            "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


COLUMNS = [("n_docs", "docs"), ("n_tokens", "tokens"), ("floor_tokens_per_s", "floor tok/s"), ("cache_tokens_per_s", "cache tok/s"),
           ("cache_vs_floor", "cache/floor"), ("operator_train_s", "operators s"), ("prompt_s", "prompt s"),
           ("recovery_s", "recovery s"), ("generate_s", "generate s"), ("peak_anon_mb", "host anon MB"),
           ("peak_rss_mb", "host RSS MB"), ("peak_gpu_mb", "GPU MB")]


def format_table(rows: list[dict]) -> str:
    def fmt(v):
        if isinstance(v, (int, float)) and abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    cells = [[title for _, title in COLUMNS]] + [[fmt(r.get(k)) for k, _ in COLUMNS] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c[i].rjust(widths[i]) for i in range(len(COLUMNS))) for c in cells)


def run_scale_bench(out: str | Path, args: ScaleArgs | None = None) -> dict:
    """Every size in `args.sizes` (smallest first); writes out/results.json after each size (a later
    failure keeps the finished rows) and returns the results dict."""
    from ..store.models import resolve_device

    args = args or ScaleArgs()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(args.device)
    results = {"args": asdict(args), "machine": machine(dev), "rows": []}
    for N in sorted(args.sizes):
        work = out / "work" / f"n{N}"
        logger.info("scale bench: %d documents on %s", N, dev)
        if args.in_process:
            row = run_size(N, args, work)
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
                row = pool.submit(_child, N, asdict(args), str(work), logging.getLogger().getEffectiveLevel()).result()
        results["rows"].append(row)
        (out / "results.json").write_text(json.dumps(results, indent=1))
    if not args.keep:
        shutil.rmtree(out / "work", ignore_errors=True)
    return results


# ------------------------------------------------------------------------------------------- CLI


def cmd_bench_scale(args):
    from ..method.arguments import parse_int_list

    sizes = tuple(parse_int_list(args.sizes, "--sizes", minimum=1))
    sa = ScaleArgs(sizes=sizes, doc_tokens=args.doc_tokens, K=args.K, S=args.S, R=args.R, steps=args.steps,
                   prompts=args.prompts, device=args.device, threads=args.threads, in_process=args.in_process,
                   keep=args.keep, batch_size=args.batch_size)
    res = run_scale_bench(args.out, sa)
    m = res["machine"]
    print(f"stride bench scale on {m['device']} ({m['gpu'] or str(m['cpu_count']) + ' CPU cores'}), "
          f"threads {res['rows'][0].get('threads') if res['rows'] else '?'}:")
    print(format_table(res["rows"]))
    print(f"results: {Path(args.out) / 'results.json'}")


def register(bench_subparsers, common_parent):
    """`stride bench scale ...` (added by stride_core.bench.commands)."""
    d = ScaleArgs()
    x = bench_subparsers.add_parser("scale", help="time and memory of indexing and querying as the corpus grows "
                                                  "(synthetic tokens, built-in model family)", parents=[common_parent])
    x.add_argument("--out", required=True, help="output folder for results.json")
    x.add_argument("--sizes", default=",".join(str(s) for s in d.sizes), help="comma-separated document counts")
    x.add_argument("--device", default="auto", help="auto, cpu or cuda")
    x.add_argument("--doc-tokens", dest="doc_tokens", type=int, default=d.doc_tokens, help="longest synthetic document")
    x.add_argument("--batch-size", dest="batch_size", type=int, default=d.batch_size, help="documents per forward batch")
    x.add_argument("--K", type=int, default=d.K, help="subsets")
    x.add_argument("--S", type=int, default=d.S, help="subsets per document")
    x.add_argument("--R", type=int, default=d.R, help="basis rank")
    x.add_argument("--steps", type=int, default=d.steps, help="operator training steps")
    x.add_argument("--prompts", type=int, default=d.prompts, help="new prompts timed per size (after one warm-up)")
    x.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    x.add_argument("--in-process", dest="in_process", action="store_true", help="run every size in this process")
    x.add_argument("--keep", action="store_true", help="keep the token stores, caches and operators under OUT/work")
    x.set_defaults(func=cmd_bench_scale)
