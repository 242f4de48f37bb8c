"""RidgeAccumulator and the ridge solver against float64 numpy on materialised data.

Data are fresh random each run, far from zero mean (the shift must matter), with
correlated columns (condition number of the Gram at most ~16: an fp32 batch Gram
resolves the λ = 0 solution of a design only as far as its conditioning allows);
targets depend on the sites linearly plus noise.
"""
import numpy as np
import pytest
import torch

from conftest import backends_here
from ridge_bounds import fp32_gram_r2_bound
from fusedlens.probe.accumulator import RidgeAccumulator
from fusedlens.probe.solve import SiteFit, cross_validate, default_rcond, fit_weights

BACKENDS = backends_here()


def make_data(S=2, N=400, d=17, m=3):
    mix = torch.randn(S, d, d) * (0.3 / d ** 0.5) + torch.eye(d)  # singular values in ~[0.4, 1.6]
    x = (torch.randn(S, N, d) @ mix * 2 + torch.randn(S, 1, d) * 30).float()
    y = (x[-1].double() - x[-1].double().mean(0)) @ torch.randn(d, m).double() * 0.3
    y = (y + torch.randn(N, m).double() * 2 + 50).float()
    return x, y


def accumulate(x, y, sizes, backend=None, order=None):
    acc = RidgeAccumulator(x.shape[0], x.shape[2], y.shape[1] if y.dim() == 2 else 1, backend=backend)
    bounds = np.cumsum([0] + list(sizes))
    batches = [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    for i in (order if order is not None else range(len(batches))):
        a, b = batches[i]
        acc.update(x[:, a:b], y[a:b])
    return acc


def random_sizes(N):
    sizes = []
    while sum(sizes) < N:
        sizes.append(min(int(torch.randint(1, 90, ())), N - sum(sizes)))
    return sizes


def lstsq(X, Y, rcond=None):
    """float64 least squares with an intercept: weights, intercept, fitted values."""
    A = np.c_[X, np.ones(len(X))]
    sol = np.linalg.lstsq(A, Y, rcond=rcond)[0]
    return sol[:-1], sol[-1], A @ sol


def r2_np(Y, pred):
    return 1 - ((Y - pred) ** 2).sum(0) / ((Y - Y.mean(0)) ** 2).sum(0)


def fit_path(acc, site, lams):
    fit = SiteFit.fit(acc.moments(site), default_rcond(acc.roundoff))
    lams = torch.as_tensor(lams, dtype=torch.float64)
    return fit, lams, 1 - fit.train_sse(lams) / fit.train.yy


@pytest.mark.parametrize("backend", BACKENDS)
def test_r2_and_weights_match_lstsq(backend):
    x, y = make_data(N=550)
    x, y, xh, yh = x[:, :400], y[:400], x[:, 400:], y[400:]
    sizes = random_sizes(x.shape[1])
    acc = accumulate(x, y, sizes, backend)
    held = accumulate(xh, yh, [150], backend)
    Y, Yh = y.double().numpy(), yh.double().numpy()
    for s in range(x.shape[0]):
        fit, lams, r2_train = fit_path(acc, s, [0.0])
        w_ls, b_ls, pred = lstsq(x[s].double().numpy(), Y)
        _, _, tol, tol_h = fp32_gram_r2_bound(x[s].double().numpy(), Y, xh[s].double().numpy(), Yh, 0.0, 150)
        np.testing.assert_allclose(r2_train[0].numpy(), r2_np(Y, pred), rtol=0, atol=tol.max())
        w, b = fit.weights(lams)
        np.testing.assert_allclose(w[0].numpy(), w_ls, rtol=0, atol=1e-5 * np.abs(w_ls).max())
        pred_h = xh[s].double().numpy() @ w_ls + b_ls
        r2_held = 1 - fit.sse(held.moments(s), lams) / held.moments(s).yy
        np.testing.assert_allclose(r2_held[0].numpy(), r2_np(Yh, pred_h), rtol=0, atol=tol_h.max())
        np.testing.assert_allclose((xh[s].double() @ w[0] + b[0]).numpy(), pred_h, rtol=0, atol=1e-5 * np.abs(Yh).max())


def test_lambda_path_matches_direct_solves():
    x, y = make_data(S=1, N=420, d=23, m=2)
    x, y, xh, yh = x[:, :300], y[:300], x[:, 300:], y[300:]
    acc, held = accumulate(x, y, [300]), accumulate(xh, yh, [57, 63])
    X, Y, Xh, Yh = (t.double().numpy() for t in (x[0], y, xh[0], yh))
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    scale = np.trace(Xc.T @ Xc) / X.shape[1]
    lams = np.array([0.0, 1e-3, 0.1, 1.0, 30.0]) * scale
    fit, lams_t, r2_train = fit_path(acc, 0, lams)
    w, b = fit.weights(lams_t)
    r2_held = 1 - fit.sse(held.moments(0), lams_t) / held.moments(0).yy
    for i, lam in enumerate(lams):
        w_direct = np.linalg.solve(Xc.T @ Xc + lam * np.eye(X.shape[1]), Xc.T @ Yc)
        b_direct = Y.mean(0) - X.mean(0) @ w_direct
        _, _, tol, tol_h = fp32_gram_r2_bound(X, Y, Xh, Yh, lam / scale, 300)
        np.testing.assert_allclose(w[i].numpy(), w_direct, rtol=0, atol=1e-5 * np.abs(w_direct).max())
        np.testing.assert_allclose(r2_train[i].numpy(), r2_np(Y, X @ w_direct + b_direct), rtol=0, atol=tol.max())
        np.testing.assert_allclose(r2_held[i].numpy(), r2_np(Yh, Xh @ w_direct + b_direct), rtol=0, atol=tol_h.max())
    assert bool((r2_train[1:] <= r2_train[:-1] + 1e-12).all())  # more penalty never fits the training data better


def test_invariant_to_batch_size_and_order():
    x, y = make_data(S=2, N=360, d=19, m=2)
    lams = [0.0, 0.01, 1.0]
    ref = [fit_path(accumulate(x, y, [360]), s, lams)[2] for s in range(2)]
    sizes = [1] * 7 + [13] * 11 + [210]
    for acc in (accumulate(x, y, sizes), accumulate(x, y, sizes, order=torch.randperm(len(sizes)).tolist())):
        for s in range(2):
            torch.testing.assert_close(fit_path(acc, s, lams)[2], ref[s], rtol=0, atol=1e-6)


def test_merge_of_two_halves_equals_the_whole():
    x, y = make_data(S=2, N=300, d=11, m=2)
    first, second = accumulate(x[:, :140], y[:140], [70, 70]), accumulate(x[:, 140:] + 3.0, y[140:] - 2.0, [160])
    whole = accumulate(torch.cat([x[:, :140], x[:, 140:] + 3.0], 1), torch.cat([y[:140], y[140:] - 2.0]), [300])
    assert not torch.equal(first.shift_x, second.shift_x)  # different reference means: the merge re-shifts
    merged = RidgeAccumulator(2, 11, 2).merge(first).merge(second).merge(RidgeAccumulator(2, 11, 2))
    assert merged.n == whole.n == 300
    for s in range(2):
        a, b = merged.moments(s), whole.moments(s)
        for name in ("mean_x", "mean_y", "xx", "xy", "yy"):
            ta, tb = getattr(a, name), getattr(b, name)
            torch.testing.assert_close(ta, tb, rtol=0, atol=1e-6 * float(tb.abs().max()))
        torch.testing.assert_close(fit_path(merged, s, [0.0, 0.1])[2], fit_path(whole, s, [0.0, 0.1])[2],
                                   rtol=0, atol=1e-6)
    assert first.n == 140 and second.n == 160  # merge leaves its argument alone


def test_reshift_and_sums_are_exact_in_float64():
    x, y = make_data(S=2, N=90, d=7, m=2)
    acc = accumulate(x, y, [40, 50], backend="torch")
    new_x, new_y = torch.randn(2, 7).double() * 10, torch.randn(2).double() * 10
    before = [acc.moments(s) for s in range(2)]
    acc.reshift(new_x, new_y)
    sums = acc.sums()
    u, v = x.double() - new_x[:, None], y.double() - new_y
    torch.testing.assert_close(sums["xtx"], u.mT @ u)
    torch.testing.assert_close(sums["xty"], u.mT @ v)
    torch.testing.assert_close(sums["sum_x"], u.sum(1))
    torch.testing.assert_close(sums["sum_y"], v.sum(0))
    torch.testing.assert_close(sums["sum_yy"], (v * v).sum(0))
    assert float(sums["n"]) == 90
    for s in range(2):
        torch.testing.assert_close(acc.moments(s).xx, before[s].xx)


def test_heldout_sse_is_the_design_formula_on_shifted_sums():
    """The raw-sum SSE(w, b) on an accumulator's shifted sums, with b → b + μᵀw − ν, equals SiteFit.sse."""
    x, y = make_data(S=1, N=280, d=9, m=2)
    x, y, xh, yh = x[:, :200], y[:200], x[:, 200:], y[200:]
    fit, lams, _ = fit_path(accumulate(x, y, [200], backend="torch"), 0, [0.3])
    held = accumulate(xh, yh, [80], backend="torch")
    w, b = fit.weights(lams)
    w, b = w[0], b[0]
    s = held.sums()
    bb = b + held.shift_x[0] @ w - held.shift_y
    sse = (s["sum_yy"] - 2 * (w * s["xty"][0]).sum(0) - 2 * bb * s["sum_y"] + (w * (s["xtx"][0] @ w)).sum(0)
           + 2 * bb * (w * s["sum_x"][0][:, None]).sum(0) + s["n"] * bb * bb)
    direct = ((yh.double() - xh[0].double() @ w - b) ** 2).sum(0)
    torch.testing.assert_close(sse, direct, rtol=1e-9, atol=0)
    torch.testing.assert_close(fit.sse(held.moments(0), lams)[0], direct, rtol=1e-9, atol=0)


def test_rank_deficient_design_uses_the_pseudo_inverse():
    N, d = 250, 15
    x, y = make_data(S=1, N=N, d=d, m=2)
    x[0, :, 3] = x[0, :, 1]  # duplicate
    x[0, :, 7] = x[0, :, 0] - 2 * x[0, :, 2]  # combination, up to its float32 rounding
    x[0, :, 11] = 4.25  # constant: no variance at all after centring
    acc = accumulate(x, y, [100, 150])
    fit, lams, r2_train = fit_path(acc, 0, [0.0])
    assert fit.rank == d - 3
    X, Y = x[0].double().numpy(), y.double().numpy()
    _, _, pred = lstsq(X, Y, rcond=1e-6)  # singular values of the rounding are ~1e-7 of the largest
    np.testing.assert_allclose(r2_train[0].numpy(), r2_np(Y, pred), rtol=0, atol=1e-6)
    w, b = fit.weights(lams)
    np.testing.assert_allclose((x[0].double() @ w[0] + b[0]).numpy(), pred, rtol=0, atol=1e-5 * np.abs(Y).max())
    assert float(w[0][11].abs().max()) < 1e-9  # the minimum-norm solution puts nothing on the constant column


def test_kfold_choice_matches_brute_force():
    x, y = make_data(S=1, N=340, d=30, m=2)
    x, y, xt, yt = x[:, :240], y[:240], x[:, 240:], y[240:]
    alphas = [0.0, 1e-3, 0.03, 1.0, 30.0]
    folds = [accumulate(x[:, f::3], y[f::3], [80]) for f in range(3)]
    out = cross_validate(folds, accumulate(xt, yt, [100]), alphas)[0]
    X, Y = x[0].double().numpy(), y.double().numpy()
    sse, sst = np.zeros((len(alphas), 2)), np.zeros(2)
    for f in range(3):
        tr = np.ones(240, bool)
        tr[f::3] = False
        Xt, Yt = X[tr], Y[tr]
        mx, my = Xt.mean(0), Yt.mean(0)
        G = (Xt - mx).T @ (Xt - mx)
        for i, a in enumerate(alphas):
            w = np.linalg.solve(G + a * np.trace(G) / 30 * np.eye(30), (Xt - mx).T @ (Yt - my))
            sse[i] += ((Y[~tr] - (X[~tr] - mx) @ w - my) ** 2).sum(0)
        sst += ((Y[~tr] - Y[~tr].mean(0)) ** 2).sum(0)
    r2_val = 1 - sse / sst
    for j in range(2):
        best = int(r2_val[:, j].argmax())
        assert out[j]["alpha"] == alphas[best]
        assert abs(out[j]["r2_val"] - r2_val[best, j]) < 1e-6
        assert out[j]["n_train"] == 240 and out[j]["n_heldout"] == 100 and out[j]["rank"] == 30
    w, b = fit_weights(RidgeAccumulator(1, 30, 2).merge(folds[0]).merge(folds[1]).merge(folds[2]), out[0]["alpha"])
    pred = xt[0].double() @ w[0, :, 0] + b[0, 0]
    assert abs(out[0]["r2_heldout"] - float(r2_np(yt[:, 0].double().numpy(), pred.numpy()))) < 1e-6


def test_state_round_trip(tmp_path):
    x, y = make_data(S=2, N=50, d=6, m=1)
    acc = accumulate(x, y, [20, 30])
    acc.save(str(tmp_path / "acc.pt"))
    back = RidgeAccumulator.load(str(tmp_path / "acc.pt"))
    again = RidgeAccumulator.from_state(acc.state())
    for other in (back, again, acc.copy()):
        assert other.n == 50 and other.roundoff == acc.roundoff
        for key, t in acc.state().items():
            assert torch.equal(other.state()[key], t), key
    assert torch.equal(back.gram, acc.gram)
    packed = acc.state()["gram_upper"]
    assert packed.shape == (2, 8 * 9 // 2)  # D = d + m + 1 = 8: the upper triangle only
    # a state saved with the square Gram (before the packing) still loads
    old = {**{k: v for k, v in acc.state().items() if k != "gram_upper"}, "gram": acc.gram}
    assert torch.equal(RidgeAccumulator.from_state(old).gram, acc.gram)
    with pytest.raises(ValueError, match="state: missing"):
        RidgeAccumulator.from_state({"gram": acc.gram})
    with pytest.raises(ValueError, match="do not fit"):
        RidgeAccumulator.from_state({**acc.state(), "gram_upper": packed[:, 1:]})


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_in_activations_is_a_clear_error_and_adds_nothing(backend):
    acc = RidgeAccumulator(2, 5, 1, backend=backend)
    x, y = torch.randn(2, 8, 5), torch.randn(8)
    bad = x.clone()
    bad[0, 3, 1] = float("nan")
    for _ in range(2):  # first batch (sets the shift) and a later one
        with pytest.raises(ValueError, match="x: contains 1 NaN/Inf"):
            acc.update(bad, y)
        before = acc.gram.clone()
        acc.update(x, y)
        assert acc.n in (8, 16) and not torch.equal(acc.gram, before)
    bad[1, 0, 4] = float("-inf")
    with pytest.raises(ValueError, match="x: contains 2 NaN/Inf"):
        acc.update(bad, y)
    assert acc.n == 16 and bool(torch.isfinite(acc.gram).all())


def test_bad_input_is_a_clear_error():
    acc = RidgeAccumulator(2, 5, 1)
    x, y = torch.randn(2, 8, 5), torch.randn(8)
    with pytest.raises(ValueError, match="y: contains 1 NaN/Inf"):
        acc.update(x, torch.where(torch.arange(8) == 2, float("inf"), y))
    assert acc.n == 0  # nothing was added
    with pytest.raises(ValueError, match=r"x: expected \[2 sites, rows, 5\]"):
        acc.update(x[:, :, :4], y)
    with pytest.raises(ValueError, match="y: expected 1 target"):
        acc.update(x, torch.randn(8, 2))
    with pytest.raises(ValueError, match="no rows"):
        acc.moments(0)
    with pytest.raises(ValueError, match="other"):
        acc.merge(RidgeAccumulator(2, 5, 2))
    with pytest.raises(ValueError, match="n_sites"):
        RidgeAccumulator(0, 5, 1)
    acc.update(x, y)
    with pytest.raises(ValueError, match="folds: k-fold"):
        cross_validate([acc])
    with pytest.raises(ValueError, match="alphas"):
        cross_validate([acc, acc.copy()], alphas=[-1.0])
    with pytest.raises(ValueError, match="train: need at least 2 rows"):
        SiteFit.fit(RidgeAccumulator(1, 3, 1).update(torch.randn(1, 3), torch.randn(1)).moments(0), 1e-7)


def _all_reduce_worker(rank, world, init_file, x, y, out_prefix):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    rows = slice(0, 60) if rank == 0 else slice(60, None)  # different reference means on the two ranks
    acc = RidgeAccumulator(x.shape[0], x.shape[2], y.shape[1]).update(x[:, rows], y[rows])
    acc.all_reduce()
    acc.save(f"{out_prefix}.{rank}")
    dist.destroy_process_group()


def test_all_reduce_over_two_processes(tmp_path):
    x, y = make_data(S=2, N=150, d=8, m=2)
    torch.multiprocessing.spawn(_all_reduce_worker, args=(2, str(tmp_path / "init"), x, y, str(tmp_path / "state")),
                                nprocs=2)
    whole = accumulate(x, y, [150])
    states = [RidgeAccumulator.load(str(tmp_path / f"state.{rank}")) for rank in range(2)]
    assert torch.equal(states[0].gram, states[1].gram) and torch.equal(states[0].shift_x, states[1].shift_x)
    for acc in states:
        assert acc.n == 150
        for s in range(2):
            got, want = acc.moments(s), whole.moments(s)
            torch.testing.assert_close(got.xx, want.xx, rtol=0, atol=1e-6 * float(want.xx.abs().max()))
            torch.testing.assert_close(got.xy, want.xy, rtol=0, atol=1e-6 * float(want.xy.abs().max()))
            torch.testing.assert_close(got.mean_x, want.mean_x)
