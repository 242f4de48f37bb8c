"""ClassStats: streamed class means, pooled within-class scatter and the paired differences' second moment
against float64 torch on the materialised rows; invariant to batch sizes, merges and process count.

Rows are fresh random each run, far from zero mean (the fp32 batch Gram's shift must matter), with
class means apart and correlated columns.
"""
import pytest
import torch

from conftest import backends_here
from fusedlens.directions.stats import ClassStats

BACKENDS = backends_here()


def make_rows(S=3, N=300, d=13):
    mix = torch.randn(S, d, d) * (0.3 / d ** 0.5) + torch.eye(d)
    labels = torch.rand(N) < 0.4
    labels[:2], labels[2:4] = True, False  # both classes present
    shift = torch.randn(S, 1, d) * 20 + labels[None, :, None] * torch.randn(S, 1, d) * 2
    x = (torch.randn(S, N, d) @ mix * 1.5 + shift).float()
    diff = (torch.randn(S, N // 3, d) @ mix + torch.randn(S, 1, d) * 3).float()
    return x, labels, diff


def reference(x, labels, diff):
    X, D = x.double(), diff.double()
    mp, mn = X[:, labels].mean(1), X[:, ~labels].mean(1)
    cp, cn = X[:, labels] - mp[:, None], X[:, ~labels] - mn[:, None]
    # a float32 mean errs relative to its summands, not to itself (paired means can cancel to near zero)
    diff_rms = (D.square().mean(1).amax(1)).sqrt()
    return {"mean_pos": mp, "mean_neg": mn, "scatter": cp.mT @ cp + cn.mT @ cn, "pair_moment": D.mT @ D,
            "mean_diff_pairs": D.mean(1), "scale": {"mean_diff_pairs": diff_rms}}


def accumulate(x, labels, diff, sizes, backend=None):
    st = ClassStats(x.shape[0], x.shape[2], backend=backend)
    a = 0
    for n in sizes:
        st.update(x[:, a:a + n], labels[a:a + n])
        a += n
    assert a == x.shape[1]
    for b in range(0, diff.shape[1], 17):
        st.update_pairs(diff[:, b:b + 17])
    return st


def random_sizes(N):
    sizes = []
    while sum(sizes) < N:
        sizes.append(min(int(torch.randint(1, 70, ())), N - sum(sizes)))
    return sizes


def assert_matches(st, ref, rtol):
    for s in range(st.n_sites):
        got = st.site(s)
        for name in ("mean_pos", "mean_neg", "scatter", "pair_moment", "mean_diff_pairs"):
            want = ref[name][s]
            scale = max(float(want.abs().max()), float(ref["scale"].get(name, torch.zeros(s + 1))[s]))
            torch.testing.assert_close(getattr(got, name), want, rtol=0, atol=rtol * scale,
                                       msg=lambda m: f"{name} at site {s}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_streamed_statistics_equal_float64_on_the_materialised_rows(backend):
    x, labels, diff = make_rows()
    st = accumulate(x, labels, diff, random_sizes(x.shape[1]), backend)
    ref = reference(x, labels, diff)
    assert st.site(0).n_pos == int(labels.sum()) and st.site(0).n_neg == int((~labels).sum())
    assert st.site(0).n_pairs == diff.shape[1]
    # the float64 reference backend is exact up to float64 rounding; fp32 batch Grams to ~1e-6 of the scale
    assert_matches(st, ref, 1e-12 if backend == "torch" else 2e-6)


def test_invariant_to_batch_size_and_merge():
    x, labels, diff = make_rows(S=2, N=240, d=9)
    whole = accumulate(x, labels, diff, [240])
    ones = accumulate(x, labels, diff, [1] * 240)
    halves = accumulate(x[:, :100], labels[:100], diff[:, :40], [50, 50]).merge(
        accumulate(x[:, 100:] , labels[100:], diff[:, 40:], [140]))
    ref = reference(x, labels, diff)
    for st in (whole, ones, halves):
        assert_matches(st, ref, 2e-6)
        assert st.counts() == whole.counts()


def test_one_site_one_row_at_a_time_and_one_wide():
    x = (torch.randn(1, 9, 1) * 3 + 7).float()
    labels = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0, 1])
    st = ClassStats(1, 1)
    for i in range(9):
        st.update(x[0, i:i + 1], labels[i:i + 1])  # [rows, d] for a single site
    st.update_pairs(x[0, :4] - x[0, 4:8])
    ref = reference(x, labels.bool(), (x[:, :4] - x[:, 4:8]))
    assert_matches(st, ref, 2e-6)


def test_state_round_trip(tmp_path):
    x, labels, diff = make_rows(S=2, N=60, d=5)
    st = accumulate(x, labels, diff, [30, 30])
    st.save(str(tmp_path / "st.pt"))
    back = ClassStats.load(str(tmp_path / "st.pt"))
    for s in range(2):
        a, b = st.site(s), back.site(s)
        for name in ("mean_pos", "mean_neg", "scatter", "pair_moment"):
            assert torch.equal(getattr(a, name), getattr(b, name))
    with pytest.raises(ValueError, match="state: expected the parts"):
        ClassStats.from_state({"pos": {}})


def test_bad_input_is_one_line_and_adds_nothing():
    st = ClassStats(2, 4)
    x = torch.randn(2, 6, 4)
    bad = x.clone()
    bad[1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="x: contains 1 NaN/Inf"):
        st.update(bad, torch.tensor([1, 0, 1, 0, 1, 0]))
    with pytest.raises(ValueError, match="diff: contains 1 NaN/Inf"):
        st.update_pairs(bad)
    assert st.counts() == {"pos": 0, "neg": 0, "pairs": 0}
    with pytest.raises(ValueError, match="labels: expected 0/1"):
        st.update(x, torch.tensor([2, 0, 1, 0, 1, 0]))
    with pytest.raises(ValueError, match="labels: expected one label per row"):
        st.update(x, torch.tensor([1, 0]))
    with pytest.raises(ValueError, match=r"x: expected \[2 sites, rows, 4\]"):
        st.update(x[:, :, :3], torch.tensor([1, 0, 1, 0, 1, 0]))
    st.update(x, torch.ones(6))
    with pytest.raises(ValueError, match="neg: no rows of the negative class"):
        st.site(0)


def _all_reduce_worker(rank, world, init_file, x, labels, diff, out_prefix):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    rows = slice(0, 70) if rank == 0 else slice(70, None)  # different reference means on the two ranks
    pairs = slice(0, 11) if rank == 0 else slice(11, None)
    st = accumulate(x[:, rows], labels[rows], diff[:, pairs], [x[:, rows].shape[1]])
    st.all_reduce()
    st.save(f"{out_prefix}.{rank}")
    dist.destroy_process_group()


def test_all_reduce_over_two_processes(tmp_path):
    x, labels, diff = make_rows(S=2, N=180, d=7)
    torch.multiprocessing.spawn(_all_reduce_worker, args=(2, str(tmp_path / "init"), x, labels, diff,
                                                          str(tmp_path / "state")), nprocs=2)
    states = [ClassStats.load(str(tmp_path / f"state.{rank}")) for rank in range(2)]
    ref = reference(x, labels, diff)
    for st in states:
        assert st.counts() == {"pos": int(labels.sum()), "neg": int((~labels).sum()), "pairs": diff.shape[1]}
        assert_matches(st, ref, 2e-6)
    for s in range(2):
        assert torch.equal(states[0].site(s).scatter, states[1].site(s).scatter)
