"""The geometry of concept pairs, in float64: the causal inner product, tied-weight detection and the
cosine tables (within / between concepts, embedding–unembedding alignment) of difference vectors.

The causal inner product ⟨x, y⟩_C = xᵀ Cov(γ)⁻¹ y (Park et al.'s choice of the unembedding space's
inner product; Cov over every unembedding row, population normalisation 1/V — a scale, which no
cosine sees) is computed by whitening: with Cov = QΛQᵀ, x ↦ Λ^-½ Qᵀ x, after which it is the plain dot
product. A singular Cov (fewer rows than the width, a dead direction) gets a ridge, and says so.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..core.checks import check_same_width, check_tensor

RIDGE = 1e-6  # times the mean eigenvalue, added only when Cov is singular


def covariance(rows: torch.Tensor, block: int = 8192) -> torch.Tensor:
    """Population covariance [d, d] of the rows, float64 on the CPU: the mean first, then the centred
    Gram summed over blocks of rows on the rows' own device (a [block, d] float64 copy at a time, so a
    large vocabulary never needs a float64 copy of the whole matrix; centring first: no cancellation)."""
    v, d = rows.shape
    mean = torch.zeros(d, dtype=torch.float64, device=rows.device)
    for i in range(0, v, block):
        mean += rows[i:i + block].detach().double().sum(0)
    mean /= v
    cov = torch.zeros(d, d, dtype=torch.float64, device=rows.device)
    for i in range(0, v, block):
        c = rows[i:i + block].detach().double() - mean
        cov += c.T @ c
    return (cov / v).cpu()


@dataclass
class CausalInnerProduct:
    """Cov(γ) of the unembedding rows and its inverse square root (float64)."""

    cov: torch.Tensor        # [d, d]
    whiten: torch.Tensor     # [d, d] rows: Λ^-½ Qᵀ, so ⟨x, y⟩_C = (W x)·(W y)
    eigenvalues: torch.Tensor
    ridge: float             # 0.0 unless Cov was singular
    note: str

    @classmethod
    def from_unembedding(cls, gamma: torch.Tensor) -> "CausalInnerProduct":
        check_tensor("unembedding", gamma, ndim=2, floating=True)
        cov = covariance(gamma)
        v, d = gamma.shape
        lam, q = torch.linalg.eigh(cov)
        # numpy's matrix_rank tolerance: eigenvalues at or below d·ε·λ_max are rounding, not signal
        tol = d * torch.finfo(torch.float64).eps * float(lam[-1].clamp_min(0))
        ridge, note = 0.0, f"Cov over {v} unembedding rows, full rank (condition number {float(lam[-1] / lam[0]):.3g})"
        if float(lam[0]) <= tol or float(lam[-1]) <= 0:
            rank = int((lam > tol).sum())
            ridge = RIDGE * float(lam.clamp_min(0).mean()) if float(lam[-1]) > 0 else RIDGE
            lam = lam.clamp_min(0) + ridge
            note = (f"Cov over {v} unembedding rows is singular (rank {rank} of {d}): ridge-regularised, "
                    f"+{ridge:.3g}·I ({RIDGE:g} × the mean eigenvalue)")
        return cls(cov=cov, whiten=(q / lam.sqrt()).T.contiguous(), eigenvalues=lam, ridge=ridge, note=note)

    @property
    def d_model(self) -> int:
        return self.cov.shape[0]

    def transform(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        """Rows of x in whitened coordinates (float64)."""
        check_tensor(name, x, ndim=(1, 2), floating=True)
        check_same_width(name, x, self.d_model, "the unembedding width")
        return x.detach().to("cpu", torch.float64) @ self.whiten.T

    def inner(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """⟨x_i, y_j⟩_C for rows of x, y: [n, m] (two vectors: a scalar tensor)."""
        a, b = self.transform(x, "x"), self.transform(y, "y")
        return a @ b.T if b.dim() == 2 else a @ b

    def cosine(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Causal cosines between the rows of x and y: [n, m] (two vectors: a scalar tensor)."""
        a, b = self.transform(x, "x"), self.transform(y, "y")
        out = cosine_matrix(a.reshape(-1, self.d_model), b.reshape(-1, self.d_model))
        return out.reshape(a.shape[:-1] + b.shape[:-1])


def cosine_matrix(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """Euclidean cosines between the rows of a and b, [n, m] (float64); a zero row gives NaN, not 0."""
    a = a.to(torch.float64)
    b = a if b is None else b.to(torch.float64)
    return (a @ b.T) / (a.norm(dim=-1).unsqueeze(-1) * b.norm(dim=-1).unsqueeze(0))


def tied(unembedding: torch.Tensor, embedding: torch.Tensor | None) -> str | None:
    """'same storage', 'equal values' or None (untied, or no embedding)."""
    if embedding is None or unembedding.shape != embedding.shape:
        return None
    if (unembedding.device == embedding.device and unembedding.data_ptr() == embedding.data_ptr()
            and unembedding.stride() == embedding.stride()):
        return "same storage"
    return "equal values" if torch.equal(unembedding, embedding.to(unembedding.device, unembedding.dtype)) else None


def _block_means(cos: torch.Tensor, groups: list[torch.Tensor]) -> torch.Tensor:
    """[concepts, concepts]: the mean of cos over pairs of concept i × concept j, the pair with itself left
    out on the diagonal (NaN where a concept has fewer than two pairs)."""
    k = len(groups)
    out = torch.full((k, k), math.nan, dtype=torch.float64)
    for i, gi in enumerate(groups):
        for j, gj in enumerate(groups):
            block = cos[gi][:, gj]
            if i == j:
                n = len(gi)
                if n >= 2:
                    out[i, j] = (block.sum() - block.diagonal().sum()) / (n * (n - 1))
            elif len(gi) and len(gj):
                out[i, j] = block.mean()
    return out


@dataclass
class Geometry:
    """One inner product's tables. pairs: [concepts, concepts] mean pair cosines (diagonal = within-concept
    consistency); directions: cosines of the concept directions (mean Δγ); alignment_pairs: cos(Δγ, Δg) per
    pair; alignment: per concept, cos(mean Δγ, mean Δg) (NaN without an embedding)."""

    pairs: torch.Tensor
    directions: torch.Tensor
    alignment_pairs: torch.Tensor
    alignment: torch.Tensor

    @property
    def within(self) -> torch.Tensor:
        return self.pairs.diagonal()

    def between_mean(self) -> float:
        """The mean of the off-diagonal concept-pair means (NaN with one concept)."""
        k = self.pairs.shape[0]
        off = self.pairs[~torch.eye(k, dtype=torch.bool)]
        off = off[~off.isnan()]
        return float(off.mean()) if off.numel() else math.nan

    def between_directions_abs_mean(self) -> float:
        k = self.directions.shape[0]
        off = self.directions[~torch.eye(k, dtype=torch.bool)].abs()
        off = off[~off.isnan()]
        return float(off.mean()) if off.numel() else math.nan


def geometry_tables(d_gamma: torch.Tensor, d_g: torch.Tensor | None, groups: list[torch.Tensor],
                     metric: CausalInnerProduct | None = None) -> Geometry:
    """Tables of difference vectors d_gamma [pairs, d] (and d_g, the embedding's, or None) grouped into
    concepts by `groups` (index tensors into the pairs), under the Euclidean inner product (metric None)
    or the causal one (both vectors whitened by the same Cov(γ))."""
    check_tensor("d_gamma", d_gamma, ndim=2, floating=True)
    if d_g is not None:
        check_tensor("d_g", d_g, ndim=2, floating=True)
        check_same_width("d_g", d_g, d_gamma.shape[1], "the unembedding width")
        if d_g.shape[0] != d_gamma.shape[0]:
            raise ValueError(f"d_g: {d_g.shape[0]} rows, expected one per pair ({d_gamma.shape[0]})")
    a = metric.transform(d_gamma, "d_gamma") if metric is not None else d_gamma.to(torch.float64)
    b = None if d_g is None else (metric.transform(d_g, "d_g") if metric is not None else d_g.to(torch.float64))
    means = torch.stack([a[g].mean(0) if len(g) else torch.full_like(a[0], math.nan) for g in groups])
    nan = torch.full((a.shape[0],), math.nan, dtype=torch.float64)
    if b is None:
        align_pairs, align = nan, torch.full((len(groups),), math.nan, dtype=torch.float64)
    else:
        align_pairs = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
        bmeans = torch.stack([b[g].mean(0) if len(g) else torch.full_like(b[0], math.nan) for g in groups])
        align = (means * bmeans).sum(-1) / (means.norm(dim=-1) * bmeans.norm(dim=-1))
    return Geometry(pairs=_block_means(cosine_matrix(a), groups), directions=cosine_matrix(means),
                    alignment_pairs=align_pairs, alignment=align)
