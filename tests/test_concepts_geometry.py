"""concepts.geometry: the causal inner product against an explicit inverse of Cov(γ), the cosine tables
against float64 numpy loops, tied-weight detection, singular covariances and bad widths."""
import math

import numpy as np
import pytest
import torch

from concepts_reference import causal_gram, cos, tables
from fusedlens.concepts.geometry import CausalInnerProduct, geometry_tables, cosine_matrix, covariance, tied

TOL = 1e-9  # float64 both ways; Cov's condition number here is ~10, so eigh vs inv differ by ~1e-14


def _random_case(vocab=211, d=48, sizes=(5, 1, 7, 3)):
    """Fresh random unembedding / embedding rows (a shared offset, so centring matters) and pair groups."""
    gamma = torch.randn(vocab, d) * (0.5 + torch.rand(d)) + torch.randn(d)
    emb = gamma + 0.7 * torch.randn(vocab, d)  # untied, partly aligned
    ids = torch.randint(0, vocab, (sum(sizes), 2))
    ids[:, 1] = (ids[:, 0] + 1 + torch.randint(0, vocab - 1, (len(ids),))) % vocab  # never the same token
    groups, start = [], 0
    for s in sizes:
        groups.append(torch.arange(start, start + s))
        start += s
    d_gamma = gamma[ids[:, 1]].double() - gamma[ids[:, 0]].double()
    d_g = emb[ids[:, 1]].double() - emb[ids[:, 0]].double()
    return gamma, emb, d_gamma, d_g, groups


def _assert_tables(geo, ref):
    for name in ("pairs", "directions", "alignment_pairs", "alignment"):
        got = getattr(geo, name).numpy()
        np.testing.assert_allclose(got, ref[name], rtol=0, atol=TOL, equal_nan=True, err_msg=name)


@pytest.mark.parametrize("causal", [False, True])
def test_tables_equal_numpy_loops(causal):
    gamma, _, d_gamma, d_g, groups = _random_case()
    metric = CausalInnerProduct.from_unembedding(gamma) if causal else None
    assert metric is None or metric.ridge == 0.0
    geo = geometry_tables(d_gamma, d_g, groups, metric)
    m = causal_gram(gamma.numpy()) if causal else None
    _assert_tables(geo, tables(d_gamma.numpy(), d_g.numpy(), [g.tolist() for g in groups], m))
    assert math.isnan(float(geo.within[1]))  # one pair: no within-concept consistency
    assert geo.within[[0, 2, 3]].isfinite().all()


def test_causal_inner_product_is_the_explicit_inverse():
    gamma = torch.randn(300, 40) * (0.2 + 2 * torch.rand(40))  # unequal scales: C⁻¹ far from a multiple of I
    metric = CausalInnerProduct.from_unembedding(gamma)
    x, y = torch.randn(6, 40, dtype=torch.float64), torch.randn(4, 40, dtype=torch.float64)
    inv = causal_gram(gamma.numpy())
    want = x.numpy() @ inv @ y.numpy().T
    np.testing.assert_allclose(metric.inner(x, y).numpy(), want, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(float(metric.inner(x[0], y[0])), want[0, 0], rtol=1e-10)
    np.testing.assert_allclose(float(metric.cosine(x[1], y[2])), cos(x[1].numpy(), y[2].numpy(), inv), atol=TOL)
    assert metric.cosine(x, y).shape == (6, 4)
    # not the Euclidean cosine: the metric matters for these scales
    assert float((metric.cosine(x, y) - cosine_matrix(x, y)).abs().mean()) > 1e-3
    assert "full rank" in metric.note


def test_covariance_in_blocks_equals_numpy():
    rows = torch.randn(211, 13) * 3 + 100  # a large mean: a raw-moment formula would cancel badly
    want = np.cov(rows.double().numpy().T, bias=True)
    for block in (1, 7, 211, 8192):
        np.testing.assert_allclose(covariance(rows, block=block).numpy(), want, rtol=1e-12, atol=1e-12)
    assert covariance(rows.to(torch.bfloat16)).dtype == torch.float64


@pytest.mark.parametrize("case", ["few rows", "dead direction"])
def test_singular_covariance_is_regularised_and_stated(case):
    if case == "few rows":
        gamma = torch.randn(20, 48)  # rank ≤ 19 < 48
    else:
        gamma = torch.randn(211, 48)
        gamma[:, 5] = 0.25  # constant column: zero variance
    metric = CausalInnerProduct.from_unembedding(gamma)
    assert metric.ridge > 0 and "singular" in metric.note and "ridge" in metric.note
    x = torch.randn(3, 48, dtype=torch.float64)
    want = x.numpy() @ causal_gram(gamma.numpy(), metric.ridge) @ x.numpy().T
    np.testing.assert_allclose(metric.inner(x, x).numpy(), want, rtol=1e-6)
    assert metric.inner(x, x).isfinite().all()


def test_one_concept_one_pair_odd_shapes():
    gamma, emb, d_gamma, d_g, groups = _random_case(vocab=7, d=3, sizes=(1,))
    geo = geometry_tables(d_gamma, d_g, groups, CausalInnerProduct.from_unembedding(gamma))
    assert math.isnan(float(geo.pairs[0, 0])) and math.isnan(geo.between_mean())
    assert float(geo.directions[0, 0]) == pytest.approx(1.0, abs=1e-12)
    geo = geometry_tables(d_gamma, None, groups)  # no embedding: alignment NaN, not an error
    assert geo.alignment.isnan().all() and geo.alignment_pairs.isnan().all()


def test_tied_detection():
    w = torch.randn(11, 4)
    assert tied(w, w) == "same storage"
    assert tied(w, w.clone()) == "equal values"
    other = w.clone()
    other[3, 2] += 1e-3
    assert tied(w, other) is None
    assert tied(w, None) is None and tied(w, w[:, :3]) is None
    emb = torch.nn.Embedding(11, 4)
    head = torch.nn.Linear(4, 11, bias=False)
    head.weight = emb.weight  # how HF ties them
    assert tied(head.weight.detach(), emb.weight.detach()) == "same storage"


def test_bad_widths_are_one_line_value_errors():
    gamma, _, d_gamma, d_g, groups = _random_case()
    metric = CausalInnerProduct.from_unembedding(gamma)
    for call, name in ((lambda: metric.inner(torch.randn(2, 47, dtype=torch.float64), d_gamma), "x"),
                       (lambda: metric.cosine(d_gamma, torch.randn(49, dtype=torch.float64)), "y"),
                       (lambda: geometry_tables(d_gamma, d_g[:, :-1], groups), "d_g"),
                       (lambda: geometry_tables(d_gamma, d_g[:-1], groups), "d_g"),
                       (lambda: geometry_tables(d_gamma[:, :10], None, groups, metric), "d_gamma"),
                       (lambda: CausalInnerProduct.from_unembedding(torch.randn(5)), "unembedding"),
                       (lambda: geometry_tables(d_gamma * math.nan, None, groups), "d_gamma")):
        with pytest.raises(ValueError) as e:
            call()
        assert str(e.value).startswith(name + ":") and "\n" not in str(e.value)
