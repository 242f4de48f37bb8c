"""Ridge solutions and R² from accumulated statistics: one eigendecomposition per site, any λ path.

With the centred training Gram Gc = Q diag(e) Qᵀ and P = Qᵀ Σ(x−x̄)(y−ȳ)ᵀ, the ridge
weights for penalty λ are w(λ) = Q z(λ), z = f ∘ P, f_k = 1/(e_k + λ); the intercept
b = ȳ − x̄ᵀw is not penalised. λ = 0 is the pseudo-inverse: eigenvalues at or below
`rcond · tr(Gc)` count as zero (f_k = 0), and the others give the reported rank. The
cutoff is relative to the trace because an fp32 batch Gram's entry (i, j) is off by
about 2⁻²⁴·sqrt(G_ii G_jj), so its eigenvalues by at most about 2⁻²⁴·tr(G); measured
null eigenvalues of exactly rank-deficient designs sit near 1e-9·tr. λ > 0 needs no
cutoff. On the training data SSE(λ) = Σ(y−ȳ)² − Σ_k (2f_k − e_k f_k²) P_k².

Held-out SSE in closed form. The raw-sum SSE(w, b) = Σy² − 2wᵀΣxy − 2bΣy + wᵀ(XᵀX)w
+ 2b·wᵀΣx + n·b² holds for the shifted sums of an accumulator (u = x − μ, v = y − ν)
once b is replaced by b + μᵀw − ν (the residual y − xᵀw − b equals v − uᵀw − that).
Expanding the shifted sums around the held-out means instead turns it into

    SSE = Σ(y'−ȳ')² − 2 wᵀΣ(x'−x̄')(y'−ȳ') + wᵀ Σ(x'−x̄')(x'−x̄')ᵀ w + n' δ²,
    δ = ȳ' − x̄'ᵀw − b = (ȳ' − ȳ) − (x̄' − x̄)ᵀw,

the same number without the cancellation of large raw sums; each λ costs O(d²m).
R² = 1 − SSE / Σ(y'−ȳ')² (the held-out mean, as sklearn's r2_score).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..ops.ridge_gram import default_rcond
from .accumulator import Moments, RidgeAccumulator

# Penalties relative to the mean eigenvalue tr(Gc)/d: λ = α · tr(Gc)/d.
DEFAULT_ALPHAS = (0.0,) + tuple(10.0 ** (k / 2) for k in range(-12, 5))


@contextmanager
def _one_thread():
    """eigh of a few-hundred-wide matrix gains nothing from threads, and MKL's threaded
    dsyevd stalls badly (27x measured) when the cores are shared with other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def map_sites(fn, n_sites: int) -> list:
    """[fn(s) for s in range(n_sites)], sites spread over the cores: each eigh runs on one
    thread (see _one_thread) and releases the GIL, so the sites' solves run side by side."""
    workers = min(n_sites, torch.get_num_threads())
    with _one_thread():
        if workers <= 1:
            return [fn(s) for s in range(n_sites)]
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(fn, range(n_sites)))


@dataclass
class SiteFit:
    """One site's training fit: the eigendecomposition and everything a λ path needs."""

    train: Moments
    evals: torch.Tensor  # [d]
    evecs: torch.Tensor  # [d, d]
    proj: torch.Tensor  # [d, m] = Qᵀ Σ(x−x̄)(y−ȳ)ᵀ
    cutoff: float

    @classmethod
    def fit(cls, train: Moments, rcond: float) -> "SiteFit":
        if train.n < 2:
            raise ValueError(f"train: need at least 2 rows to fit, got {train.n:g}")
        evals, evecs = torch.linalg.eigh(train.xx)
        evals = evals.clamp_min(0)
        return cls(train, evals, evecs, evecs.mT @ train.xy, rcond * float(evals.sum()))

    @property
    def rank(self) -> int:
        return int((self.evals > self.cutoff).sum())

    @property
    def scale(self) -> float:
        """tr(Gc)/d: the unit of the relative penalties α."""
        return float(self.evals.mean())

    def coef(self, lams: torch.Tensor) -> torch.Tensor:
        """Eigen-basis weights z [L, d, m] for penalties lams [L]."""
        lams = lams.to(self.evals)[:, None]
        keep = (self.evals[None, :] > self.cutoff) | (lams > 0)  # the cutoff only matters for λ = 0
        denom = self.evals[None, :] + lams
        f = torch.where(keep, 1.0 / torch.where(keep, denom, 1.0), 0.0)
        return f[:, :, None] * self.proj[None]

    def weights(self, lams: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """w [L, d, m], b [L, m] in the original coordinates of x and y."""
        w = self.evecs @ self.coef(lams)
        return w, self.train.mean_y - torch.einsum("d,ldm->lm", self.train.mean_x, w)

    def train_sse(self, lams: torch.Tensor) -> torch.Tensor:
        z = self.coef(lams)
        return self.train.yy - (2 * z * self.proj - self.evals[None, :, None] * z * z).sum(1)

    def sse(self, held: Moments, lams: torch.Tensor) -> torch.Tensor:
        """SSE [L, m] of the λ path on other data, in closed form from its moments (O(d²·L·m))."""
        z = self.coef(lams)  # [L, d, m]
        L, d, m = z.shape
        w = self.evecs @ z.transpose(0, 1).reshape(d, L * m)  # every λ's weights as columns of one GEMM
        cross = (w * held.xy.repeat(1, L)).sum(0)
        quad = (w * (held.xx @ w)).sum(0)
        delta = (held.mean_y - self.train.mean_y).repeat(L) - (held.mean_x - self.train.mean_x) @ w
        return (held.yy.repeat(L) - 2 * cross + quad + held.n * delta * delta).reshape(L, m)


def r2(sse: torch.Tensor, sst: torch.Tensor) -> torch.Tensor:
    return 1.0 - sse / sst


def check_alphas(alphas) -> torch.Tensor:
    alphas = torch.as_tensor(alphas, dtype=torch.float64)
    if alphas.dim() != 1 or alphas.numel() == 0 or bool((alphas < 0).any()) or not bool(alphas.isfinite().all()):
        raise ValueError(f"alphas: expected a non-empty list of finite penalties >= 0, got {alphas.tolist()}")
    return alphas


def _check_folds(folds, test):
    if not isinstance(folds, (list, tuple)) or not folds:
        raise ValueError("folds: expected a non-empty list of RidgeAccumulator")
    for acc in list(folds) + ([test] if test is not None else []):
        folds[0]._check_compatible(acc)
    if len(folds) < 2:
        raise ValueError(f"folds: k-fold validation needs at least 2 folds, got {len(folds)}")
    if any(acc.n == 0 for acc in folds):
        raise ValueError("folds: every fold needs at least one row")


def cross_validate(folds: list[RidgeAccumulator], test: RidgeAccumulator | None = None,
                   alphas=DEFAULT_ALPHAS, rcond: float | None = None) -> list[list[dict]]:
    """Choose α per site and target by k-fold validation, refit on all folds, report on test.

    Returns [site][target] dicts: r2_train, r2_val (pooled over folds: 1 − ΣSSE/ΣSST),
    r2_heldout (None without test), alpha, lam (λ of the full fit), rank, n_train, n_heldout.
    """
    _check_folds(folds, test)
    alphas = check_alphas(alphas)
    rcond = default_rcond(max(a.roundoff for a in folds)) if rcond is None else rcond
    return map_sites(lambda s: _cross_validate_site(s, folds, test, alphas, rcond), folds[0].n_sites)


def _cross_validate_site(s, folds, test, alphas, rcond) -> list[dict]:
    held = test.moments(s) if test is not None and test.n > 0 else None
    return cross_validate_parts([acc.moments(s) for acc in folds], held, alphas, rcond)


def cross_validate_parts(parts: list[Moments], held: Moments | None, alphas, rcond: float,
                         shared: list[list[int]] = ()) -> list[dict]:
    """One site: α per target column chosen by k-fold validation over `parts` (the folds' moments),
    the refit on all of them, R² on `held`. Columns listed together in `shared` get one α, the one
    with the least summed validation SSE (a class's one-hot columns). Run it under map_sites (one
    thread per eigh)."""
    alphas = torch.as_tensor(alphas, dtype=torch.float64)
    sse_val, sst_val = 0.0, 0.0
    for f, part in enumerate(parts):
        fit = SiteFit.fit(pool(parts[:f] + parts[f + 1:]), rcond)
        sse_val = sse_val + fit.sse(part, alphas * fit.scale)
        sst_val = sst_val + part.yy
    r2_val = r2(sse_val, sst_val)  # [L, m]
    best = r2_val.nan_to_num(nan=-torch.inf).argmax(0)  # [m]
    for cols in shared:
        best[cols] = int(sse_val[:, cols].sum(1).argmin())
    full = SiteFit.fit(pool(parts), rcond)
    lams = alphas * full.scale
    r2_train = r2(full.train_sse(lams), full.train.yy)
    r2_test = None if held is None else r2(full.sse(held, lams), held.yy)
    return [{"r2_train": float(r2_train[b, j]), "r2_val": float(r2_val[b, j]),
             "r2_heldout": None if r2_test is None else float(r2_test[b, j]),
             "alpha": float(alphas[b]), "lam": float(lams[b]), "rank": full.rank,
             "n_train": int(full.train.n), "n_heldout": 0 if held is None else int(held.n)}
            for j, b in enumerate(best.tolist())]


def pool(parts: list[Moments | None]) -> Moments:
    """The moments of the union of disjoint samples (None parts: no rows)."""
    parts = [p for p in parts if p is not None]
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    return total


def weights_at(train: Moments, alpha: float, rcond: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One site's ridge weights w [d, m], b [m] at relative penalty α."""
    with _one_thread():
        fit = SiteFit.fit(train, rcond)
        w, b = fit.weights(torch.tensor([alpha * fit.scale], dtype=torch.float64))
    return w[0], b[0]


def fit_weights(train: RidgeAccumulator, alpha: float, rcond: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge weights of every site at one relative penalty α: w [S, d, m], b [S, m]."""
    rcond = default_rcond(train.roundoff) if rcond is None else rcond
    ws, bs = [], []
    with _one_thread():
        for s in range(train.n_sites):
            fit = SiteFit.fit(train.moments(s), rcond)
            w, b = fit.weights(torch.tensor([alpha * fit.scale], dtype=torch.float64))
            ws.append(w[0])
            bs.append(b[0])
    return torch.stack(ws), torch.stack(bs)
