"""Float64 numpy truth for the concept-geometry tests: the causal inner product through an explicit
`np.linalg.inv` of the unembedding rows' covariance, and every table by plain loops over pairs."""
from __future__ import annotations

import math

import numpy as np


def causal_gram(gamma: np.ndarray, ridge: float = 0.0) -> np.ndarray:
    """Cov(γ)⁻¹ (population covariance over the rows; + ridge·I where the code said it added one)."""
    cov = np.cov(np.asarray(gamma, dtype=np.float64).T, bias=True)
    return np.linalg.inv(cov + ridge * np.eye(cov.shape[0]))


def cos(x, y, m=None) -> float:
    m = np.eye(len(x)) if m is None else m
    return float(x @ m @ y / math.sqrt((x @ m @ x) * (y @ m @ y)))


def tables(d_gamma: np.ndarray, d_g, groups: list[list[int]], m=None) -> dict:
    """pairs (block means, self left out on the diagonal), directions, alignment per pair and per concept.
    The inner products of all pairs come from one explicit product D M Dᵀ; means are loops over it."""
    m = np.eye(d_gamma.shape[1]) if m is None else m
    gram = d_gamma @ m @ d_gamma.T
    k = len(groups)
    pairs = np.full((k, k), np.nan)
    for i, gi in enumerate(groups):
        for j, gj in enumerate(groups):
            vals = [gram[p, q] / math.sqrt(gram[p, p] * gram[q, q]) for p in gi for q in gj if p != q]
            if vals:
                pairs[i, j] = sum(vals) / len(vals)
    nan = np.full(d_gamma.shape[1], np.nan)
    means = [d_gamma[g].mean(0) if g else nan for g in groups]
    directions = np.array([[cos(a, b, m) for b in means] for a in means])
    out = {"pairs": pairs, "directions": directions}
    if d_g is not None:
        out["alignment_pairs"] = np.array([cos(d_gamma[p], d_g[p], m) for p in range(len(d_gamma))])
        out["alignment"] = np.array([cos(d_gamma[g].mean(0), d_g[g].mean(0), m) if g else np.nan for g in groups])
    return out
