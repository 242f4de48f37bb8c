"""Reading vectors from ClassStats against float64 torch.linalg on the materialised rows; AUROC against a
brute-force pair count; a separable case that every direction must classify perfectly."""
import pytest
import torch

from conftest import backends_here
from fusedlens.directions.solve import KINDS, accuracy, auroc, check_ridge, projection_scores, site_directions
from fusedlens.directions.stats import ClassStats

BACKENDS = backends_here()


def contrast(N=400, d=11, P=150, spread=1.0):
    """Two classes with correlated noise around different means (far from 0); paired differences with a
    dominant axis (a clear eigengap for the PCA)."""
    mix = torch.randn(d, d) * (0.3 / d ** 0.5) + torch.eye(d)
    base, gap = torch.randn(d) * 15, torch.randn(d)
    labels = torch.arange(N) % 3 == 0
    x = ((torch.randn(N, d) @ mix) * spread + base + labels[:, None] * gap).float()
    axis = torch.nn.functional.normalize(torch.randn(d), dim=0)
    diff = (torch.randn(P, 1) * 2 + 3) * axis + torch.randn(P, d) * 0.3
    return x, labels, diff.float()


def stats_of(x, labels, diff, backend=None, batch=64):
    st = ClassStats(1, x.shape[1], backend=backend)
    for a in range(0, x.shape[0], batch):
        st.update(x[None, a:a + batch], labels[a:a + batch])
    st.update_pairs(diff[None])
    return st.site(0)


def reference(x, labels, diff, lam):
    X, D = x.double(), diff.double()
    mp, mn = X[labels].mean(0), X[~labels].mean(0)
    delta = mp - mn
    cp, cn = X[labels] - mp, X[~labels] - mn
    cov = (cp.T @ cp + cn.T @ cn) / (X.shape[0] - 2)
    d = X.shape[1]
    lda = torch.linalg.solve(cov + lam * torch.trace(cov) / d * torch.eye(d, dtype=torch.float64), delta) \
        if lam > 0 else torch.linalg.pinv(cov, hermitian=True) @ delta
    pc = torch.linalg.svd(D, full_matrices=False).Vh[0]  # top right singular vector = top eigvec of DᵀD
    pc = pc if float(pc @ D.mean(0)) >= 0 else -pc
    unit = torch.nn.functional.normalize
    return {"mean_diff": unit(delta, dim=0), "pca": pc, "lda": unit(lda, dim=0)}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("lam", [0.0, 0.01, 1.0])
def test_vectors_equal_float64_linalg(backend, lam):
    x, labels, diff = contrast()
    vecs, facts = site_directions(stats_of(x, labels, diff, backend), lam)
    ref = reference(x, labels, diff, lam)
    tol = 1e-10 if backend == "torch" else 1e-5  # fp32 batch Grams: ~1e-6 of the scale, condition ≤ ~10
    for k in KINDS:
        torch.testing.assert_close(vecs[k], ref[k], rtol=0, atol=tol, msg=lambda m: f"{k}: {m}")
        assert abs(float(vecs[k].norm()) - 1) < 1e-12
    assert facts["cov_rank"] == x.shape[1] and not facts["singular"]
    assert facts["n_pos"] == int(labels.sum()) and facts["n_pairs"] == diff.shape[0]
    d = x.shape[1]
    X = x.double()
    cov_trace = float(((X[labels] - X[labels].mean(0)) ** 2).sum() + ((X[~labels] - X[~labels].mean(0)) ** 2).sum()) \
        / (X.shape[0] - 2)
    assert abs(facts["lda_lambda"] - lam * cov_trace / d) <= 1e-5 * cov_trace / d


def test_singular_covariance_is_stated_and_lambda_zero_is_the_pseudo_inverse():
    x, labels, diff = contrast(N=9, d=20)  # 9 rows in 20 dimensions: rank 7
    st = stats_of(x, labels, diff, "torch")
    vecs, facts = site_directions(st, 0.0)
    assert facts["singular"] and facts["cov_rank"] == 7
    torch.testing.assert_close(vecs["lda"], reference(x, labels, diff, 0.0)["lda"], rtol=0, atol=1e-8)
    vecs, facts = site_directions(st, 0.5)
    torch.testing.assert_close(vecs["lda"], reference(x, labels, diff, 0.5)["lda"], rtol=0, atol=1e-10)
    assert facts["singular"] and facts["lda_lambda"] > 0


def test_no_within_class_spread_gives_the_mean_difference():
    x = torch.tensor([[1.0, 2.0, 3.0]] * 3 + [[0.0, 2.5, 3.0]] * 3)
    labels = torch.tensor([True] * 3 + [False] * 3)
    vecs, facts = site_directions(stats_of(x, labels, x[:3] - x[3:], "torch"), 0.1)
    assert facts["cov_rank"] == 0
    torch.testing.assert_close(vecs["lda"], vecs["mean_diff"])
    torch.testing.assert_close(vecs["pca"], vecs["mean_diff"])


def brute_auroc(scores, labels):
    p, n = scores[labels].double(), scores[~labels].double()
    gt = (p[:, None] > n[None, :]).double().sum()
    eq = (p[:, None] == n[None, :]).double().sum()
    return float((gt + 0.5 * eq) / (p.numel() * n.numel()))


def test_auroc_is_the_pair_count():
    for _ in range(5):
        N = int(torch.randint(2, 300, ()))
        labels = torch.rand(N) < torch.rand(())
        labels[0], labels[-1] = True, False
        scores = torch.randint(-6, 7, (N,)).double() + labels * torch.rand(()) * 4  # many ties
        assert auroc(scores, labels) == pytest.approx(brute_auroc(scores, labels), abs=1e-12)
        cont = torch.randn(N).double()
        assert auroc(cont, labels) == pytest.approx(brute_auroc(cont, labels), abs=1e-12)
    assert auroc(torch.tensor([1.0, 2.0]), torch.tensor([True, True])) is None
    assert auroc(torch.tensor([0.5, 0.5]), torch.tensor([True, False])) == 0.5


def test_separable_contrast_is_classified_perfectly():
    """Two classes ±5 along a random axis, noise 0.05: held-out accuracy and AUROC are 1 for every kind."""
    d = 17
    axis = torch.nn.functional.normalize(torch.randn(d), dim=0)
    base = torch.randn(d) * 10

    def rows(n):
        labels = torch.arange(n) % 2 == 0
        return (base + torch.where(labels, 5.0, -5.0)[:, None] * axis + torch.randn(n, d) * 0.05).float(), labels

    x, labels = rows(200)
    st = stats_of(x, labels, x[labels] - x[~labels])
    vecs, _ = site_directions(st, 0.1)
    V = torch.stack([vecs[k] for k in KINDS])[None].float()  # as saved
    mid = (V[0].double() @ ((st.mean_pos + st.mean_neg) / 2))[None]
    xh, lh = rows(101)
    scores = projection_scores(V, mid, xh[None])
    torch.testing.assert_close(scores[0], (xh.double() @ V[0].double().T).T - mid[0][:, None])
    for k in range(len(KINDS)):
        assert accuracy(scores[0, k], lh) == 1.0
        assert auroc(scores[0, k], lh) == 1.0
        assert float(V[0, k] @ axis) > 0.9  # each points from the negative class to the positive one


def test_bad_ridge_and_missing_pairs():
    for bad in (-1, float("nan"), float("inf"), True, "0.1"):
        with pytest.raises(ValueError, match="lda_ridge"):
            check_ridge(bad)
    x, labels, _ = contrast(N=30, d=4)
    st = ClassStats(1, 4)
    st.update(x[None], labels)
    with pytest.raises(ValueError, match="pairs: no paired differences"):
        site_directions(st.site(0), 0.1)
