"""Bounded-memory indexing (the streamed token store) and `stride bench scale` at CI size."""

import json

import numpy as np
import pytest

from stride_core.errors import RunError, StrideError
from stride_core.store.tokens import TokenizeArgs, TokenStore, begin_tokens, finish_tokens, tokenize_corpus, tokenize_part


class _Tok:
    """characters -> ids, like a tokenizer's batch call"""

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[1 + (ord(c) % 60) for c in t] for t in texts]}


TEXTS = [f"document {i} " + "words " * (i % 7) for i in range(23)]


@pytest.fixture
def corpus(ws, tmp_path):
    from stride_core.store.corpus import ImportOptions, import_corpus

    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    import_corpus(ws, src, "c", ImportOptions(shard_size=10))
    return ws, src


def test_token_store_is_chunk_invariant_and_matches_one_call(corpus, tmp_path):
    ws, _ = corpus
    whole = [ids[:12] for ids in _Tok()(TEXTS)["input_ids"]]
    for chunk in (1, 5, 1000):
        st = tokenize_corpus(ws, "c", None, tmp_path / f"t{chunk}", _Tok(), TokenizeArgs(max_tokens=12, chunk_docs=chunk))
        assert st.n_docs == 23 and st.doc_ids.tolist() == list(range(23))
        assert [st.tokens(i) for i in range(23)] == whole
        assert st.items()[3] == (whole[3], 0) and len(st.items()) == 23
    # shards: only the documents of shard 1 (doc ids 10..19), in doc_id order
    st = tokenize_corpus(ws, "c", [1], tmp_path / "s1", _Tok(), TokenizeArgs(max_tokens=12, chunk_docs=4))
    assert st.doc_ids.tolist() == list(range(10, 20)) and st.tokens(0) == whole[10]


def test_token_store_parts_resume_and_rebuild_on_a_replaced_corpus(corpus, tmp_path):
    from stride_core.store.corpus import ImportOptions, import_corpus

    ws, src = corpus
    root, targs = tmp_path / "t", TokenizeArgs(max_tokens=8, chunk_docs=4)
    begin_tokens(ws, "c", None, root, targs)
    assert tokenize_part(ws, "c", None, root, _Tok(), targs, rank=0, world=2) == 3  # chunks 0, 2, 4 of 6
    with pytest.raises(RunError, match="missing 3 chunks"):
        finish_tokens(root)
    assert tokenize_part(ws, "c", None, root, _Tok(), targs, rank=0, world=2) == 0  # done parts are kept
    assert tokenize_part(ws, "c", None, root, _Tok(), targs, rank=1, world=2) == 3
    st = finish_tokens(root)
    assert [st.tokens(i) for i in range(23)] == [ids[:8] for ids in _Tok()(TEXTS)["input_ids"]]
    assert TokenStore.open(root).n_tokens == st.n_tokens
    meta, _ = begin_tokens(ws, "c", None, root, targs)
    assert meta["finished"]  # reused as is
    src.write_text("".join(json.dumps({"text": t.upper()}) + "\n" for t in TEXTS[:20]))
    import_corpus(ws, src, "c", ImportOptions(replace=True))
    meta, doc_ids = begin_tokens(ws, "c", None, root, targs)
    assert not meta["finished"] and len(doc_ids) == 20  # a replaced corpus is tokenized again
    with pytest.raises(StrideError):
        TokenizeArgs(chunk_docs=0)


def test_bench_scale_ci_size(tmp_path):
    from stride_core.bench.scale import ScaleArgs, format_table, run_scale_bench

    args = ScaleArgs(sizes=(120, 60), doc_tokens=16, K=8, S=2, R=4, steps=3, subset_batch=8, prompts=1,
                     batch_size=16, threads=1, in_process=True, device="cpu")
    res = run_scale_bench(tmp_path / "out", args)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(res["rows"])) and [r["n_docs"] for r in res["rows"]] == [60, 120]
    for r in res["rows"]:
        assert set(r["stages"]) == {"tokens", "floor", "cache", "subsets", "operators", "open_index", "query"}
        assert 16 // 2 * r["n_docs"] <= r["n_tokens"] <= 16 * r["n_docs"]
        assert r["cache_tokens_per_s"] > 0 and r["floor_tokens_per_s"] > 0 and r["cache_vs_floor"] > 0
        assert 0 < r["recovery_s"] <= r["prompt_s"] and 0 < r["peak_anon_mb"] <= r["peak_rss_mb"]
    assert not (tmp_path / "out" / "work").exists()  # cleaned up unless keep
    assert "cache/floor" in format_table(res["rows"])
    for bad in (dict(K=500), dict(sizes=()), dict(S=0), dict(doc_tokens=1000), dict(device="tpu")):
        with pytest.raises(StrideError):
            ScaleArgs(**{**dict(sizes=(100,), K=8), **bad})


def test_bench_scale_is_a_stride_bench_action(tmp_path):
    from stride_core.cli import build_parser

    args = build_parser().parse_args(["bench", "scale", "--out", str(tmp_path), "--sizes", "100,200", "--K", "8"])
    assert args.func.__name__ == "cmd_bench_scale" and args.sizes == "100,200" and args.K == 8


def test_recovery_through_the_design_equals_dense_and_sparse_matrices(monkeypatch):
    import stride_core.method.recovery as r
    from stride_core.method.recovery import LassoRecovery
    from stride_core.method.subsets import SubsetDesign

    design = SubsetDesign.random(np.arange(400), 60, 4, seed=1)
    y = np.random.default_rng(2).standard_normal((5, 60)).astype(np.float32)
    for kw in (dict(), dict(alpha=0.5), dict(positive=True)):
        a = LassoRecovery(**kw).fit(design, y)  # member-list (gather / scatter-add) operator
        b = LassoRecovery(**kw).fit(design.dense(), y)  # dense M
        assert a.alpha_ratio_ == b.alpha_ratio_
        assert np.allclose(a.influence_, b.influence_, atol=2e-4) and np.allclose(a.intercept_, b.intercept_, atol=2e-4)  # solver tol 1e-4
        errs = LassoRecovery(**kw).validation_errors(design, y)
        assert np.allclose(list(errs.values()), list(LassoRecovery(**kw).validation_errors(design.dense(), y).values()), rtol=1e-4)
    monkeypatch.setattr(r._Operator, "DENSE_LIMIT", 0)  # torch sparse kernels
    c = LassoRecovery().fit(design.dense(), y)
    assert np.allclose(LassoRecovery().fit(design, y).influence_, c.influence_, atol=2e-4)
    with pytest.raises(StrideError, match="columns"):
        LassoRecovery().validation_errors(design, y[:, :50])
    # one query at a time gives the batch's answers (per-query convergence)
    one = np.concatenate([LassoRecovery(alpha_ratio=0.05).fit(design, y[i:i + 1]).influence_ for i in range(5)])
    assert np.allclose(one, LassoRecovery(alpha_ratio=0.05).fit(design, y).influence_, atol=1e-5)


class _Recording(_Tok):
    """_Tok that remembers the longest text it was given."""

    def __init__(self, inner=None):
        self.longest, self.inner = 0, inner

    def __call__(self, texts, add_special_tokens=False):
        self.longest = max([self.longest, *map(len, texts)])
        return (self.inner or super().__call__)(texts, add_special_tokens=add_special_tokens)


def _long_corpus(ws, tmp_path, texts):
    from stride_core.store.corpus import import_corpus

    src = tmp_path / "long.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    import_corpus(ws, src, "long")


def test_tokenization_reads_only_a_prefix_of_long_documents(ws, tmp_path):
    from stride_core.store.tokens import char_budget

    texts = TEXTS + ["long words " * 30_000]  # 330k characters
    _long_corpus(ws, tmp_path, texts)
    tok = _Recording()
    st = tokenize_corpus(ws, "long", None, tmp_path / "t", tok, TokenizeArgs(max_tokens=12, chunk_docs=5))
    assert [st.tokens(i) for i in range(len(texts))] == [ids[:12] for ids in _Tok()(texts)["input_ids"]]
    assert tok.longest <= char_budget(12) < 1000


def test_a_prefix_with_too_few_tokens_is_read_again_longer(ws, tmp_path):
    """A tokenizer whose tokens are whole words of 300 characters: the first prefix gives too few tokens."""
    def words(texts, add_special_tokens=False):
        return {"input_ids": [[len(w) for w in t.split(" ")] for t in texts]}

    texts = ["a" * 300 + " " + ("b" * 299 + " ") * 500, "short text here", "c" * 5000]
    _long_corpus(ws, tmp_path, texts)
    tok = _Recording(words)
    st = tokenize_corpus(ws, "long", None, tmp_path / "t", tok, TokenizeArgs(max_tokens=12, chunk_docs=2))
    assert [st.tokens(i) for i in range(3)] == [ids[:12] for ids in words(texts)["input_ids"]]
    assert 12 * 300 < tok.longest < len(texts[0]) // 5  # grown 4x at a time, not read whole


def test_bpe_tokens_of_a_prefix_equal_those_of_the_whole_text(ws, tmp_path):
    import random

    from stride_core.store.tiny_model import train_tokenizer

    rng = random.Random(0)
    vocab = "the json module logging re subprocess pathlib csv def return class import".split()
    texts = [" ".join(rng.choice(vocab) for _ in range(n)) for n in (5, 300, 4000)]
    texts += ["def f(x):\n" + "        return x  # note\n" * 400, "日本語のテキスト😀" * 400, "z" * 6000, "=" * 3000 + " tail",
              " \t\n " * 300 + "word " * 400, "\n\n".join(["para graph"] * 600), "Ünïcödé ñ çàfé " * 300]
    texts += ["".join(rng.choice(["a", "b", " ", "  ", "\n", "é", "字", ".", "(", "1"]) for _ in range(rng.randint(50, 3000)))
              for _ in range(20)]
    tok = train_tokenizer(texts, 400, tmp_path / "tok")
    _long_corpus(ws, tmp_path, texts)
    for max_tokens in (2, 64, 300):
        st = tokenize_corpus(ws, "long", None, tmp_path / f"t{max_tokens}", tok, TokenizeArgs(max_tokens=max_tokens, chunk_docs=8))
        assert [st.tokens(i) for i in range(len(texts))] == [tok(t, add_special_tokens=False)["input_ids"][:max_tokens] for t in texts]
