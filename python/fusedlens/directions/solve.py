"""Reading vectors from one site's class statistics, and the held-out scores of a projection.

mean_diff: μ+ − μ−. pca: the top eigenvector of the paired differences' uncentred second moment
Σ δδᵀ — RepE's first principal component: RepE presents the two members of each pair in random
order and runs a centred PCA on the differences; random signs leave δδᵀ unchanged and put the mean
near 0, so both find the same axis. Its sign is chosen so that the mean difference projects ≥ 0
(neg → pos). lda: Fisher's
(Σ_pooled + λ·(tr Σ_pooled / d)·I)⁻¹ (μ+ − μ−), Σ_pooled = scatter / (n+ + n− − 2), through one
eigendecomposition (rank: eigenvalues above the batch Grams' rounding, as for
probes); with λ = 0 a singular Σ_pooled takes the pseudo-inverse; with no within-class spread at all
(Σ_pooled = 0) it is the mean difference, the ridge's limit. Every vector is returned unit-norm
(float64), or zero where the two class means coincide.
"""
from __future__ import annotations

import torch

from ..ops.ridge_gram import default_rcond
from .stats import SiteStats

KINDS = ("mean_diff", "pca", "lda")


def _unit(v: torch.Tensor) -> tuple[torch.Tensor, float]:
    norm = float(v.norm())
    return (v / norm if norm > 0 else v), norm


def check_ridge(lda_ridge) -> float:
    if isinstance(lda_ridge, bool) or not isinstance(lda_ridge, (int, float)) or not lda_ridge >= 0 \
            or lda_ridge == float("inf"):
        raise ValueError(f"lda_ridge: expected a finite number >= 0, got {lda_ridge!r}")
    return float(lda_ridge)


def site_directions(st: SiteStats, lda_ridge: float) -> tuple[dict[str, torch.Tensor], dict]:
    """{kind: unit vector [d] float64} and the facts behind them (norms, counts, rank, spectrum)."""
    lda_ridge = check_ridge(lda_ridge)
    d = st.mean_pos.numel()
    delta = st.mean_pos - st.mean_neg
    out, facts = {}, {"n_pos": st.n_pos, "n_neg": st.n_neg, "n_pairs": st.n_pairs}
    out["mean_diff"], facts["mean_diff_norm"] = _unit(delta)

    if st.n_pairs == 0:
        raise ValueError("pairs: no paired differences accumulated (the PCA needs pairs)")
    evals, evecs = torch.linalg.eigh(st.pair_moment)
    v = evecs[:, -1]
    if float(v @ st.mean_diff_pairs) < 0:
        v = -v
    out["pca"] = v / v.norm()
    total = float(evals.clamp_min(0).sum())
    facts["pca_explained"] = float(evals[-1]) / total if total > 0 else None
    facts["pca_projected_mean"] = float(out["pca"] @ st.mean_diff_pairs)

    n = st.n_pos + st.n_neg
    if n < 3:
        raise ValueError(f"rows: the pooled covariance needs at least 3 rows, got {n}")
    cov = st.scatter / (n - 2)
    e, V = torch.linalg.eigh(cov)
    e = e.clamp_min(0)
    cutoff = default_rcond(st.roundoff) * float(e.sum())  # below: the batch Grams' rounding, as probes count rank
    rank = int((e > cutoff).sum())
    lam = lda_ridge * float(e.sum()) / d
    inv = torch.where(e > cutoff, 1 / (e + lam), torch.zeros_like(e)) if lam == 0 else 1 / (e + lam)
    w = V @ (inv * (V.mT @ delta))
    out["lda"], facts["lda_norm"] = _unit(w)
    if facts["lda_norm"] == 0:  # no within-class spread at all: the ridge's limit, the mean difference
        out["lda"] = out["mean_diff"]
    facts.update(cov_rank=rank, singular=rank < d, lda_lambda=lam, cov_trace=float(e.sum()))
    return out, facts


def projection_scores(vectors: torch.Tensor, midpoints: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Scores [S, K, N] float64 of rows x [S, N, d] on unit vectors [S, K, d]: v·x − midpoint[S, K]."""
    return torch.einsum("skd,snd->skn", vectors.double(), x.double()) - midpoints.double()[:, :, None]


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float | None:
    """P(score of a positive > score of a negative) + ½ P(tie): the Mann–Whitney U over n+ · n−, from
    mid-ranks of the pooled scores (float64). None when a class is missing."""
    scores, labels = scores.double().flatten(), labels.bool().flatten()
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = torch.argsort(scores, stable=True)
    sorted_s = scores[order]
    # mid-rank of each tie group: (first + last) / 2, 1-based
    first = torch.searchsorted(sorted_s, sorted_s, right=False).double()
    last = torch.searchsorted(sorted_s, sorted_s, right=True).double()
    ranks = torch.empty_like(scores)
    ranks[order] = (first + last + 1) / 2
    u = float(ranks[labels].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float | None:
    """Fraction of rows whose sign of (projection − midpoint) is their class (> 0: positive)."""
    labels = labels.bool().flatten()
    if labels.numel() == 0:
        return None
    return float(((scores.flatten() > 0) == labels).double().mean())
