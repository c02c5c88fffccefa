import numpy as np
import pytest

from stride_core.errors import StrideError
from stride_core.method.recovery import LassoRecovery
from stride_core.method.subsets import SubsetDesign


def test_design_is_left_regular_and_seeded():
    d = SubsetDesign.random(np.arange(500), K=60, S=5, seed=3)
    assert d.members.shape == (500, 5)
    assert all(len(set(r)) == 5 for r in d.members)
    assert d.dense().sum(0).tolist() == [5.0] * 500
    assert np.array_equal(d.members, SubsetDesign.random(np.arange(500), 60, 5, seed=3).members)
    indptr, docs = d.csr()
    assert indptr[-1] == 2500 and np.array_equal(np.diff(indptr), d.sizes())
    with pytest.raises(StrideError, match="larger than N"):
        SubsetDesign.random(np.arange(10), K=20, S=2)


def test_design_roundtrip_checks_doc_ids(tmp_path):
    from stride_core.errors import RunError

    d = SubsetDesign.random(np.arange(100) + 7, K=20, S=3)
    d.save(tmp_path / "m.safetensors")
    d2 = SubsetDesign.load(tmp_path / "m.safetensors", np.arange(100) + 7)
    assert np.array_equal(d.members, d2.members) and d2.K == 20
    with pytest.raises(RunError, match="other documents"):
        SubsetDesign.load(tmp_path / "m.safetensors", np.arange(100))


def test_planted_sparse_vector_is_recovered():
    N, K, S = 2000, 300, 10
    design = SubsetDesign.random(np.arange(N), K, S, seed=0)
    rng = np.random.default_rng(1)
    Q = 5
    W = np.zeros((Q, N), dtype=np.float32)
    for q in range(Q):
        supp = rng.choice(N, 10, replace=False)
        W[q, supp] = rng.choice([-1, 1], 10) * rng.uniform(0.5, 1.5, 10)
    y = W @ design.dense().T + 0.3 + 0.01 * rng.standard_normal((Q, K)).astype(np.float32)
    rec = LassoRecovery().fit(design, y)
    for q in range(Q):
        true = set(np.flatnonzero(W[q]))
        found = set(np.flatnonzero(np.abs(rec.influence_[q]) > 0.1))
        precision = len(true & found) / max(1, len(found))
        recall = len(true & found) / len(true)
        assert precision >= 0.95 and recall >= 0.95, (q, precision, recall)
    assert np.allclose(rec.intercept_, 0.3, atol=0.1)


@pytest.mark.parametrize("positive", [False, True])
def test_matches_sklearn_lasso(positive):
    from sklearn.linear_model import Lasso

    rng = np.random.default_rng(0)
    K, N = 80, 120
    M = (rng.random((K, N)) < 0.1).astype(np.float32)
    y = rng.standard_normal((3, K)).astype(np.float32)
    lam = 2.0
    ours = LassoRecovery(alpha=lam, positive=positive, max_iter=5000, tol=1e-9).fit(M, y)
    for q in range(3):
        sk = Lasso(alpha=lam / K, fit_intercept=True, positive=positive, max_iter=100000, tol=1e-10).fit(M, y[q])
        assert np.allclose(ours.influence_[q], sk.coef_, atol=2e-3)
        assert abs(ours.intercept_[q] - sk.intercept_) < 2e-3


def test_dense_and_sparse_paths_agree(monkeypatch):
    import stride_core.method.recovery as r

    design = SubsetDesign.random(np.arange(300), 50, 4, seed=0)
    y = np.random.default_rng(0).standard_normal((4, 50)).astype(np.float32)
    a = LassoRecovery(alpha_ratio=0.1).fit(design, y).influence_
    monkeypatch.setattr(r._Operator, "DENSE_LIMIT", 0)
    b = LassoRecovery(alpha_ratio=0.1).fit(design, y).influence_
    assert np.allclose(a, b, atol=1e-4)


def test_bad_arguments():
    with pytest.raises(StrideError):
        LassoRecovery(alpha=-1)
    with pytest.raises(StrideError, match="NaN"):
        LassoRecovery(alpha=0.1).fit(np.eye(3), np.array([[np.nan, 0, 0]]))
    with pytest.raises(StrideError, match="rule"):
        LassoRecovery(rule="cv")


def test_one_standard_error_rule_picks_the_sparsest_ratio_within_one_se():
    errs = {0.7: np.array([1.30, 1.10, 1.20]), 0.5: np.array([1.02, 1.05, 1.08]), 0.3: np.array([0.9, 1.1, 1.0]),
            0.1: np.array([1.5, 1.4, 1.6])}
    # min: 0.3 (mean 1.0, SE 0.0577); 0.5 (mean 1.05) is within one SE, 0.7 (mean 1.2) is not
    assert LassoRecovery.best_ratio(errs, "min") == 0.3
    assert LassoRecovery.best_ratio(errs, "1se") == 0.5
    # ties at the minimum go to the sparser fit under both rules
    tie = {0.5: np.array([1.0, 1.0]), 0.2: np.array([1.0, 1.0])}
    assert LassoRecovery.best_ratio(tie, "min") == LassoRecovery.best_ratio(tie, "1se") == 0.5


def test_one_se_rule_is_never_denser_than_min_on_noisy_measurements():
    design = SubsetDesign.random(np.arange(600), 120, 5, seed=4)
    rng = np.random.default_rng(5)
    W = np.zeros((8, 600), dtype=np.float32)
    W[:, :5] = 1.0
    y = W @ design.dense().T + 0.5 * rng.standard_normal((8, 120)).astype(np.float32)
    a, b = LassoRecovery(rule="min").fit(design, y), LassoRecovery(rule="1se").fit(design, y)
    assert b.alpha_ratio_ >= a.alpha_ratio_
    assert (b.influence_ != 0).sum() <= (a.influence_ != 0).sum()
    errs = LassoRecovery().validation_errors(design, y)
    assert LassoRecovery.best_ratio(errs, "1se") == b.alpha_ratio_ and LassoRecovery.best_ratio(errs, "min") == a.alpha_ratio_


def test_top_nonzero_matches_a_full_stable_sort():
    """attribute() ranks only the non-zero influence entries; same order as the full stable argsort."""
    from stride_core.runs.attribution import top_nonzero

    g = np.random.default_rng(0)
    for _ in range(20):
        w = np.where(g.random(300) < 0.1, g.choice([-2.0, -1.0, 0.5, 1.0, 3.0], 300), 0.0)  # sparse, with ties
        k = int(g.integers(1, 40))
        order = np.argsort(-w, kind="stable")
        want_h = [j for j in order[:k] if w[j] > 0]
        want_n = [j for j in order[::-1][:k] if w[j] < 0]
        got_h, got_n = top_nonzero(w, k)
        assert got_h.tolist() == want_h and got_n.tolist() == want_n
    assert [len(x) for x in top_nonzero(np.zeros(5), 3)] == [0, 0]


@pytest.mark.parametrize("positive", [False, True])
def test_working_set_lasso_equals_the_full_solve(positive):
    """fista_working_set (solve on a growing working set, check all documents) reaches the full
    FISTA's solution: same support, same values to the solver's tolerance, optimality on every zero."""
    import torch

    from stride_core.method.recovery import _operator, fista, fista_working_set

    N, K, S, Q = 3000, 100, 5, 3
    design = SubsetDesign.random(np.arange(N), K, S, seed=1)
    g = np.random.default_rng(2)
    W = np.zeros((Q, N))
    for q in range(Q):
        sup = g.choice(N, 8, replace=False)
        W[q, sup] = g.uniform(1, 2, 8) * (1 if positive else g.choice([-1, 1], 8))
    M = np.zeros((K, N))
    for s in range(S):
        M[np.asarray(design.members)[:, s], np.arange(N)] += 1
    y = torch.from_numpy(W @ M.T + g.normal(0, 0.05, (Q, K))).float()
    op = _operator(design, torch.device("cpu"))
    yc = y - y.mean(dim=1, keepdim=True)
    lam = 0.2 * op.rmv(yc).abs().amax(dim=1)
    full = fista(op, yc, lam, 3000, 1e-7, positive)
    sizes, restrict = [], op.restrict
    op.restrict = lambda docs: sizes.append(len(docs)) or restrict(docs)
    ws = fista_working_set(op, yc, lam, 3000, 1e-7, positive)
    assert sizes and max(sizes) < N // 2  # the working-set path ran, on a fraction of the documents
    assert torch.equal(full != 0, ws != 0)
    assert float((full - ws).abs().max()) <= 1e-3 * float(full.abs().max())
    corr = op.rmv(yc - op.mv(ws))
    zero = ws == 0
    assert bool(((corr if positive else corr.abs())[zero] <= lam[:, None].expand_as(corr)[zero] * 1.01).all())
    assert set(np.flatnonzero(ws[0].numpy())) >= set(np.flatnonzero(W[0]))  # the planted documents are found


def test_bench_recovery_cli(tmp_path):
    """`stride bench recovery`: both solvers on one planted problem; they agree and find the planted documents."""
    import json

    from stride_core.cli import main

    out = tmp_path / "rec.json"
    main(["bench", "recovery", "--N", "4000", "--K", "200", "--S", "5", "--support", "5", "--noise", "0.05",
          "--repeats", "1", "--out", str(out)])
    res = json.loads(out.read_text())
    assert res["max_rel_dw"] < 1e-2 and res["planted_found_full"] == res["planted_found_working_set"] == 1.0
    assert res["full_s"] > 0 and res["working_set_s"] > 0

def test_summary_lists_a_prompt_whose_lasso_kept_only_harmful_documents():
    """The printed digest (demo, `stride attribute`) must not drop a prompt that has no helpful document."""
    import pandas as pd

    from stride_core.runs.attribution import ranked_rows, summary_lines

    gens = [{"query_id": q, "prompt": f"prompt {q}", "continuation": " more"} for q in ("a", "b")]
    W = np.array([[0.0, 2.0, -1.0], [0.0, -3.0, -0.5]])  # (Q, N): b has only negative entries
    df = pd.DataFrame(ranked_rows(gens, W, np.zeros(2), np.array([10, 11, 12]), k=2)).assign(snippet="text")
    lines = summary_lines(df, 5)
    assert any(line.startswith("\n[b]") for line in lines)
    assert "(no document with a positive recovered effect; 2 harmful)" in " ".join(lines)
    assert sum("doc     11" in line for line in lines) == 1  # a's one helpful document; harmful ones are not printed
