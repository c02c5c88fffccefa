"""`stride bench cost`: what attribution costs as the model grows, STRIDE beside the gradient peers.

One fixed corpus (pydocs documents cut to `tokens` tokens by a byte-level BPE of `vocab_size` ids
trained on them, the first `docs` of a seeded order; `queries` held-out documents split 40/60 into a
prompt and the completion to attribute) and models of one built-in family (GPT-2, or a Llama config)
from about 1M to 100M parameters, randomly initialised: cost does not depend on the weights. For each
size every method runs in a fresh process (spawn) and reports end-to-end seconds (fit + queries), fit
and queries apart, peak host memory (the process's high-water RSS, VmHWM, less its RSS before the
method started is `above_start`) and, on a GPU, torch's peak allocated memory:

- `stride`: the product itself at the `default` preset, as a user runs it: `import_corpus` into a
  fresh workspace (timed apart, not counted), `index` (fit: load model, token store, activation cache,
  subsets, operators; stage seconds from status.json) and `attribute` of the prompts with their given
  completions (queries; includes the generic component's reference queries of the default ranking);
- `kronfluence`: EK-FAC (library defaults, every nn.Linear incl. lm_head) via bench/peers_kronfluence;
- `dattri-logra`: LoGra via bench/peers_dattri.

The peers get the same documents as token ids (each one block: `tokens` + 1 <= the context). A method
that does not finish within `max_seconds`, is killed (out of memory) or raises is recorded with that
status and no time, never dropped. `DIR/results.json` is rewritten after each (size, method); a re-run
with the same data arguments keeps the finished rows already there, also those of sizes and methods it was not
asked for, and re-runs only the others (`--fresh` starts over). A table is printed,
and `DIR/cost.png` draws seconds against parameters (matplotlib, the `bench` extra).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import StrideError
from .cost_report import crossover, format_table, plot

logger = logging.getLogger(__name__)

# Nominal sizes at vocab_size 8192 (GPT-2, tied embeddings): name -> (n_layer, n_embd, n_head).
SIZES = {"1m": (2, 96, 4), "5m": (4, 256, 4), "20m": (6, 480, 8), "50m": (9, 640, 10), "100m": (14, 768, 12)}
COST_METHODS = ("stride", "kronfluence", "dattri-logra")
FAMILIES = ("gpt2", "llama")
DATA_FIELDS = ("docs", "tokens", "queries", "vocab_size", "family", "seed")  # a change invalidates kept rows


@dataclass
class CostArgs:
    sizes: tuple = tuple(SIZES)
    methods: tuple = COST_METHODS
    family: str = "gpt2"
    docs: int = 500
    tokens: int = 64  # tokens per document (and per query: prompt + completion)
    queries: int = 20
    vocab_size: int = 8192
    max_seconds: float = 1800.0  # per (size, method)
    device: str = "auto"
    threads: int | None = None
    seed: int = 0
    fresh: bool = False

    def __post_init__(self):
        self.sizes, self.methods = tuple(self.sizes), tuple(self.methods)
        bad = [s for s in self.sizes if s not in SIZES]
        if not self.sizes or bad:
            raise StrideError(f"unknown sizes {bad}: use some of {', '.join(SIZES)}")
        bad = [m for m in self.methods if m not in COST_METHODS]
        if not self.methods or bad:
            raise StrideError(f"unknown methods {bad}: use some of {', '.join(COST_METHODS)}")
        if self.family not in FAMILIES:
            raise StrideError(f"family must be one of {', '.join(FAMILIES)}")
        if self.docs < 10 or self.queries < 1 or not 16 <= self.tokens <= 1023:
            raise StrideError("docs must be >= 10, queries >= 1 and tokens in 16..1023")
        if not 256 <= self.vocab_size <= 65536:
            raise StrideError("vocab_size must be in 256..65536")
        if not self.max_seconds > 0 or (self.threads is not None and self.threads < 1):
            raise StrideError("max_seconds must be > 0 and threads >= 1")

    def data_key(self) -> dict:
        return {k: getattr(self, k) for k in DATA_FIELDS}


# ------------------------------------------------------------------------------ data and models


def prepare_data(args: CostArgs, work: Path) -> dict:
    """The tokenizer (work/tokenizer), the corpus JSONL, the prompts JSONL and work/data.json (token ids for
    the peers). Reused when data.json already matches args.data_key()."""
    from transformers import AutoTokenizer

    from ..store.pydocs import iter_pydocs
    from ..store.tiny_model import train_tokenizer
    from .setting_lm import split_prompt

    path = work / "data.json"
    if path.exists():
        data = json.loads(path.read_text())
        if data.get("key") == args.data_key():
            return data
    docs = [d["text"] for d in iter_pydocs()]
    order = np.random.default_rng(args.seed).permutation(len(docs))
    need = args.docs + 4 * args.queries
    if need > len(docs):
        raise StrideError(f"the pydocs corpus has {len(docs)} documents; --docs {args.docs} with --queries {args.queries} "
                          f"needs about {need}: lower --docs (use --tokens to make each document longer)")
    tdir = work / "tokenizer"
    train_tokenizer([docs[i] for i in order[:args.docs]], args.vocab_size, tdir)
    tok = AutoTokenizer.from_pretrained(str(tdir), local_files_only=True)
    texts, train_ids, pos = [], [], 0
    while len(texts) < args.docs and pos < len(order):
        ids = tok(docs[order[pos]], add_special_tokens=False)["input_ids"][:args.tokens]
        pos += 1
        text = tok.decode(ids)
        again = tok(text, add_special_tokens=False)["input_ids"][:args.tokens]
        if len(again) >= 8:
            texts.append(text)
            train_ids.append(again)
    prompts, p_ids, c_ids = [], [], []
    while len(prompts) < args.queries and pos < len(order):
        ids = tok(docs[order[pos]], add_special_tokens=False)["input_ids"][:args.tokens]
        pos += 1
        k = split_prompt(tok, ids, 0.4) if len(ids) >= 24 else None
        if k is not None:
            prompts.append({"query_id": f"q{len(prompts)}", "prompt": tok.decode(ids[:k]), "completion": tok.decode(ids[k:])})
            p_ids.append(ids[:k])
            c_ids.append(ids[k:])
    if len(texts) < args.docs or len(prompts) < args.queries:
        raise StrideError(f"only {len(texts)} documents and {len(prompts)} queries could be drawn; lower --docs or --queries")
    with open(work / "corpus.jsonl", "w", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"doc_id": i, "text": t}) + "\n")
    with open(work / "prompts.jsonl", "w", encoding="utf-8") as f:
        for p in prompts:
            f.write(json.dumps(p) + "\n")
    data = {"key": args.data_key(), "eos_id": int(tok.eos_token_id), "vocab": len(tok), "train_token_ids": train_ids,
            "query_prompt_ids": p_ids, "query_cont_ids": c_ids, "n_tokens": int(sum(len(x) for x in train_ids))}
    path.write_text(json.dumps(data))
    return data


def build_model(size: str, args: CostArgs, data: dict, out_dir: Path) -> int:
    """A randomly initialised model of `size` saved with the tokenizer into out_dir; returns its parameter count."""
    import torch

    n_layer, n_embd, n_head = SIZES[size]
    V, eos = data["vocab"], data["eos_id"]
    if args.family == "gpt2":
        from transformers import GPT2LMHeadModel

        from ..store.tiny_model import TinyModelArgs, build_config

        config = build_config(TinyModelArgs(vocab_size=V, n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                                            block_size=args.tokens + 1), V, eos)
        cls = GPT2LMHeadModel
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(vocab_size=V, hidden_size=n_embd, intermediate_size=64 * math.ceil(8 * n_embd / 3 / 64),
                             num_hidden_layers=n_layer, num_attention_heads=n_head, num_key_value_heads=n_head,
                             max_position_embeddings=max(512, args.tokens + 1), bos_token_id=eos, eos_token_id=eos,
                             tie_word_embeddings=False)
        cls = LlamaForCausalLM
    done = out_dir / "n_params.json"
    if done.exists():
        return json.loads(done.read_text())["n_params"]
    if out_dir.exists():
        shutil.rmtree(out_dir)
    torch.manual_seed(args.seed)
    model = cls(config).eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    shutil.copytree(out_dir.parent.parent / "tokenizer", out_dir, dirs_exist_ok=True)
    n = int(sum(p.numel() for p in model.parameters()))
    done.write_text(json.dumps({"n_params": n}))
    return n


# ------------------------------------------------------------------------------ one method, in a child


def _rss_mb(pid: int | str = "self", key: str = "VmRSS:") -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


def _run_stride(model_dir: Path, work: Path, device: str) -> dict:
    from ..method.arguments import AttributeArgs
    from ..runs.attribution import attribute
    from ..runs.config import make_config
    from ..runs.indexing import index
    from ..runs.progress import read_status
    from ..store.corpus import import_corpus
    from ..store.workspace import Workspace

    wsdir = work / "ws"
    if wsdir.exists():
        shutil.rmtree(wsdir)
    ws = Workspace(wsdir)
    t0 = time.perf_counter()
    info = import_corpus(ws, work.parent / "corpus.jsonl", "cost")
    t1 = time.perf_counter()
    config = make_config("cost", str(model_dir), "default", n_docs=int(info["n_docs"]))
    rdir = index(ws, "cost", config, device=device, progress=False)
    t2 = time.perf_counter()
    fit_stages = dict(read_status(rdir).durations)
    attribute(ws, "cost", work.parent / "prompts.jsonl", AttributeArgs(device=device), progress=False)
    t3 = time.perf_counter()
    stages = {k: round(v, 2) for k, v in read_status(rdir).durations.items()}
    query_stages = {k: v for k, v in stages.items() if k not in fit_stages}
    shutil.rmtree(wsdir, ignore_errors=True)
    return {"import_s": round(t1 - t0, 2), "fit_s": t2 - t1, "query_s": t3 - t2,
            "stages": {"fit": {k: round(v, 2) for k, v in fit_stages.items()}, "query": query_stages},
            "K": config.subsets.K, "S": config.subsets.S, "R": config.operators.R, "steps": config.operators.steps}


def _peer_context(model_dir: Path, data: dict, tokens: int, device: str):
    from transformers import AutoTokenizer

    from .settings import LMContext

    n = len(data["train_token_ids"])
    return LMContext(setting=None, cache_dir=model_dir, device=device, train_ids=np.arange(n), fingerprint="cost",
                     model_dir=model_dir, tokenizer=AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True),
                     eos_id=data["eos_id"], block_size=tokens + 1, train_token_ids=data["train_token_ids"],
                     query_prompt_ids=data["query_prompt_ids"], query_cont_ids=data["query_cont_ids"],
                     query_prompts=[""] * len(data["query_prompt_ids"]))


def run_method(method: str, model_dir: str, work: str, tokens: int, device: str, threads: int | None, log_level: int,
               conn) -> None:
    """Child process: one method on one model; sends a result dict (or {"error": ...}) through `conn`."""
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        import torch

        from ..store.models import resolve_device

        if threads:
            torch.set_num_threads(threads)
        dev = resolve_device(device)
        model_dir, work = Path(model_dir), Path(work)
        work.mkdir(parents=True, exist_ok=True)
        data = json.loads((work.parent / "data.json").read_text())
        start_rss = _rss_mb()
        if dev.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        if method == "stride":
            row = _run_stride(model_dir, work, dev)
        else:
            from .peers import PEER_METHODS

            _, timing = PEER_METHODS[method](_peer_context(model_dir, data, tokens, dev))
            row = {"fit_s": timing["fit_seconds"], "query_s": timing["query_seconds"]}
        row["total_s"] = row["fit_s"] + row["query_s"]
        row["call_s"] = time.perf_counter() - t0 - row.get("import_s", 0.0)
        row.update(start_rss_mb=start_rss, peak_rss_mb=_rss_mb(key="VmHWM:"), threads=torch.get_num_threads(), device=dev,
                   peak_gpu_mb=torch.cuda.max_memory_allocated() / 2**20 if dev.startswith("cuda") else None)
        conn.send(row)
    except Exception as exc:
        from .peer_inputs import PeerUnavailable

        if isinstance(exc, PeerUnavailable):
            conn.send({"unavailable": str(exc)})
            return
        logger.exception("%s failed", method)
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
    except BaseException as exc:  # reported as the row's status, not a traceback in the parent
        logger.exception("%s failed", method)
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        conn.close()


def run_one(method: str, model_dir: Path, work: Path, args: CostArgs) -> dict:
    """`run_method` in a spawned process under the time budget; the parent samples the child's VmHWM
    so that a child killed for memory still reports how far it got."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    p = ctx.Process(target=run_method, args=(method, str(model_dir), str(work), args.tokens, args.device, args.threads,
                                             logging.getLogger().getEffectiveLevel(), send), daemon=True)
    t0 = time.perf_counter()
    p.start()
    send.close()
    peak, result = None, None
    while True:
        hwm = _rss_mb(p.pid, "VmHWM:")
        peak = max(peak or 0.0, hwm) if hwm is not None else peak
        # never wait past the budget: a child that fails fast must not win the race against a budget it overran
        if recv.poll(max(0.0, min(1.0, args.max_seconds - (time.perf_counter() - t0)))):
            try:
                result = recv.recv()
            except EOFError:
                result = None
            break
        if not p.is_alive():
            break
        if time.perf_counter() - t0 > args.max_seconds:
            p.kill()
            p.join()
            return {"status": f"over budget (> {args.max_seconds:g} s)", "peak_rss_mb": peak}
    p.join(60)
    if result is None:
        code = p.exitcode
        why = "killed by signal 9 (out of memory?)" if code == -9 else f"exited with code {code}"
        return {"status": why, "peak_rss_mb": peak}
    if "unavailable" in result:
        return {"status": "unavailable: " + result["unavailable"][:300], "peak_rss_mb": peak}
    if "error" in result:
        return {"status": "failed: " + result["error"][:300], "peak_rss_mb": peak}
    result["status"] = "ok"
    result["peak_rss_mb"] = max(x for x in (result.get("peak_rss_mb"), peak) if x is not None)
    if result.get("start_rss_mb") is not None:
        result["above_start_mb"] = result["peak_rss_mb"] - result["start_rss_mb"]
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items()}


# ------------------------------------------------------------------------------ the bench


def run_cost_bench(out, args: CostArgs | None = None) -> dict:
    """Every (size, method), smallest size first; results.json after each. Returns the results dict."""
    from ..store.models import resolve_device
    from .scale import machine

    args = args or CostArgs()
    out = Path(out)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    res_path = out / "results.json"
    kept = {}
    if res_path.exists() and not args.fresh:
        try:
            old = json.loads(res_path.read_text())
            if CostArgs(**old["args"]).data_key() == args.data_key():
                kept = {(r["size"], r["method"]): r for r in old["rows"]}
        except (OSError, ValueError, KeyError, TypeError, StrideError):
            logger.warning("ignoring unreadable %s", res_path)
    dev = resolve_device(args.device)
    results = {"args": asdict(args), "machine": machine(dev), "rows": []}
    data = prepare_data(args, work)
    results["corpus"] = {"docs": len(data["train_token_ids"]), "tokens": data["n_tokens"], "queries": len(data["query_prompt_ids"]),
                         "vocab": data["vocab"]}
    sizes = sorted(args.sizes, key=lambda s: list(SIZES).index(s))
    for size in sizes:
        model_dir = work / "models" / f"{args.family}-{size}"
        n_params = build_model(size, args, data, model_dir)
        n_layer, n_embd, _ = SIZES[size]
        for method in args.methods:
            if kept.get((size, method), {}).get("status") == "ok":
                row = kept.pop((size, method))
                logger.info("cost bench: %s %s kept from %s", size, method, res_path)
            else:
                logger.info("cost bench: %s (%s parameters), %s", size, f"{n_params:,}", method)
                row = run_one(method, model_dir, work / f"{size}-{method}", args)
                row.update(size=size, method=method, family=args.family, n_params=n_params, n_layer=n_layer, n_embd=n_embd)
                logger.info("cost bench: %s %s: %s, %s s", size, method, row["status"], row.get("total_s"))
            kept.pop((size, method), None)
            results["rows"].append(row)
            _write(res_path, results, kept)
        shutil.rmtree(model_dir, ignore_errors=True)  # 100M parameters are 0.4 GB on disk
    results["rows"] = _merged(results["rows"], kept)
    results["crossover"] = crossover(results["rows"])
    res_path.write_text(json.dumps(results, indent=1))
    return results


def _merged(rows: list[dict], kept: dict) -> list[dict]:
    """This call's rows and the earlier file's rows of the (size, method) pairs it did not run, by size then
    method: `--sizes 100m` on an existing folder adds that size to the table instead of replacing it."""
    order = list(SIZES)
    out = rows + [r for r in kept.values() if r.get("size") in SIZES]
    return sorted(out, key=lambda r: (order.index(r["size"]), COST_METHODS.index(r["method"]) if r["method"] in COST_METHODS else 99))


def _write(path: Path, results: dict, kept: dict) -> None:
    path.write_text(json.dumps({**results, "rows": _merged(results["rows"], kept)}, indent=1))


# ------------------------------------------------------------------------------ CLI


def cmd_bench_cost(args):
    ca = CostArgs(sizes=tuple(s.strip() for s in args.sizes.split(",") if s.strip()),
                  methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()), family=args.family,
                  docs=args.docs, tokens=args.tokens, queries=args.queries, vocab_size=args.vocab_size,
                  max_seconds=args.max_seconds, device=args.device, threads=args.threads, fresh=args.fresh)
    res = run_cost_bench(args.out, ca)
    m = res["machine"]
    print(f"stride bench cost on {m['device']} ({m['gpu'] or str(m['cpu_count']) + ' CPU cores'}): "
          f"{res['corpus']['docs']} documents ({res['corpus']['tokens']:,} tokens), {res['corpus']['queries']} queries")
    print(format_table(res))
    print(res["crossover"]["text"])
    png = plot(res, Path(args.out) / "cost.png")
    print(f"results: {Path(args.out) / 'results.json'}" + (f", plot: {png}" if png else ""))


def register(bench_subparsers, common_parent):
    """`stride bench cost ...` (added by stride_core.bench.commands)."""
    d = CostArgs()
    x = bench_subparsers.add_parser("cost", parents=[common_parent],
                                    help="time and memory of STRIDE, kronfluence EK-FAC and dattri LoGra as the model grows")
    x.add_argument("--out", required=True, help="output folder (results.json, cost.png, work/)")
    x.add_argument("--sizes", default=",".join(d.sizes), help=f"comma-separated model sizes out of {','.join(SIZES)}")
    x.add_argument("--methods", default=",".join(d.methods), help=f"comma-separated, out of {','.join(COST_METHODS)}")
    x.add_argument("--family", choices=FAMILIES, default=d.family, help="model family (random weights)")
    x.add_argument("--docs", type=int, default=d.docs, help="training documents (pydocs)")
    x.add_argument("--tokens", type=int, default=d.tokens, help="tokens per document and per query")
    x.add_argument("--queries", type=int, default=d.queries, help="prompts attributed")
    x.add_argument("--vocab-size", dest="vocab_size", type=int, default=d.vocab_size, help="BPE vocabulary (V)")
    x.add_argument("--max-seconds", dest="max_seconds", type=float, default=d.max_seconds,
                   help="time budget per size and method; a method over it is recorded as such")
    x.add_argument("--device", default="auto", help="auto, cpu or cuda")
    x.add_argument("--threads", type=int, default=None, help="torch threads per method (default: torch's)")
    x.add_argument("--fresh", action="store_true", help="re-run every row (default: keep finished rows of results.json)")
    x.set_defaults(func=cmd_bench_cost)
