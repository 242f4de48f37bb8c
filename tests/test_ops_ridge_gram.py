"""ridge.ridge_gram on every backend present against the float64 reference, on fresh random inputs.

The fused backends compute each batch Gram in fp32: an entry (i, j) may be off by a
small multiple of 2⁻²⁴·Σ|w_i||w_j| ≤ 2⁻²⁴·sqrt(G_ii G_jj) (Cauchy-Schwarz), so the
error is measured against that scale; 1e-5 leaves room for sums of a few hundred rows.
"""
import pytest
import torch

from conftest import backends_here
from fusedlens.ops import reference_gram, ridge_gram

BACKENDS = backends_here()
# (sites, rows, d, m): odd widths that no block divides, one row, one site, D below and above a block
SHAPES = [(3, 37, 21, 2), (1, 1, 5, 1), (2, 130, 200, 3), (1, 300, 131, 1)]


def make_batch(S, N, d, m, dtype=torch.float32):
    x = (torch.randn(S, N, d) * torch.rand(S, 1, d) * 4 + torch.randn(S, 1, d) * 20).to(dtype)
    y = torch.randn(N, m) * 3 - 40
    shift_x = (x.double().mean(1) + torch.randn(S, d)).float().double()  # near, not at, the batch mean
    shift_y = (y.double().mean(0) + 0.5).float().double()
    return x, y, shift_x, shift_y


def assert_gram_close(got, want, tol=1e-5, first_col=0):
    """Entry (i, j) within tol * sqrt(G_ii G_jj), for the columns from first_col on."""
    scale = torch.diagonal(want, dim1=1, dim2=2).abs().sqrt()
    bound = (tol * scale[:, :, None] * scale[:, None, :] + 1e-12)[:, :, first_col:]
    err = (got - want).abs()[:, :, first_col:]
    assert bool((err <= bound).all()), f"max scaled error {float((err / bound).max()) * tol:.3g}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gram_matches_float64_reference(backend, shape):
    x, y, sx, sy = make_batch(*shape)
    want = reference_gram(x, y, sx, sy)
    start = torch.randn_like(want)  # it adds into what is there; the lower triangle stays untouched
    got = ridge_gram(x, y, sx, sy, start.clone(), backend=backend)
    assert torch.equal(torch.tril(got, -1), torch.tril(start, -1))
    assert_gram_close(torch.triu(got - start), want)
    S, N, d = x.shape
    m = y.shape[1]
    # the blocks are what the accumulator reads: n, Σx, Σy, Σy²
    assert torch.allclose(got[:, -1, -1] - start[:, -1, -1], torch.full((S,), float(N), dtype=torch.float64))
    u, v = x.double() - sx[:, None], y.double() - sy
    torch.testing.assert_close(got[:, :d, -1] - start[:, :d, -1], u.sum(1), rtol=1e-5, atol=1e-5 * u.abs().sum(1).max())
    torch.testing.assert_close(torch.diagonal(got[0, d:d + m, d:d + m] - start[0, d:d + m, d:d + m]), (v * v).sum(0),
                               rtol=1e-5, atol=0)
    if backend == "cpu":  # Xᵀy, Σx, yᵀy, Σy, n: float64 sums of the exact products of the fp32-shifted values
        u32, v32 = x.float() - sx.float()[:, None], y.float() - sy.float()
        exact = reference_gram(u32, v32, torch.zeros_like(sx), torch.zeros_like(sy))
        assert_gram_close(torch.triu(got - start), exact, tol=1e-13, first_col=d)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "torch"])
def test_gram_bfloat16_and_strided_inputs(backend):
    S, N, d, m = 2, 45, 67, 2
    x, y, sx, sy = make_batch(S, N, d + 5, m, dtype=torch.bfloat16)
    x = x[:, :, 3:3 + d]  # rows not contiguous in memory: the row stride is d + 5
    sx = sx[:, 3:3 + d].contiguous()
    assert x.stride(1) == d + 5
    assert_gram_close(ridge_gram(x, y, sx, sy, backend=backend), reference_gram(x, y, sx, sy))
    # float16 and float64 inputs are cast to float32 by the fused backends
    x16 = x.to(torch.float16)
    assert_gram_close(ridge_gram(x16, y, sx, sy, backend=backend), reference_gram(x16, y, sx, sy))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gram_rejects_bad_input(backend):
    x, y, sx, sy = make_batch(2, 9, 7, 1)
    bad = x.clone()
    bad[1, 4, 2] = float("nan")
    with pytest.raises(ValueError, match="x: contains 1 NaN"):
        ridge_gram(bad, y, sx, sy, backend=backend)
    with pytest.raises(ValueError, match="y: 8 rows"):
        ridge_gram(x, y[:8], sx, sy, backend=backend)
    with pytest.raises(ValueError, match="shift_x"):
        ridge_gram(x, y, sx[:1], sy, backend=backend)
    with pytest.raises(ValueError, match="out"):
        ridge_gram(x, y, sx, sy, torch.zeros(2, 9, 9), backend=backend)
    with pytest.raises(ValueError, match="x: expected a floating-point"):
        ridge_gram(x.long(), y, sx, sy, backend=backend)
    with pytest.raises(ValueError, match="x: empty"):
        ridge_gram(x[:, :0], y[:0], sx, sy, backend=backend)


def test_unknown_backend_is_a_clear_error():
    x, y, sx, sy = make_batch(1, 4, 3, 1)
    with pytest.raises(ValueError, match="backend"):
        ridge_gram(x, y, sx, sy, backend="fortran")
