"""RidgeAccumulator: streaming ridge statistics of every site (docs/design.md, "Streaming ridge probes").

For every site s the state is one float64 matrix, the augmented Gram

    A_s = W_sᵀ W_s,   W_s = [X_s − 1 shift_x[s]ᵀ | Y − 1 shift_yᵀ | 1]    (D = d + m + 1 columns)

whose blocks are the shifted XᵀX, Xᵀy and yᵀy (diagonal: Σy²), and whose last column
holds Σx, Σy and n. Only its upper triangle is stored. Each batch's Gram is computed
in fp32 (`cpu`, `triton`) or float64 (`torch`, the reference) on data shifted by a
fixed reference mean (the first batch's, rounded to float32 so the kernels subtract it
exactly) and added into the float64 totals; activations are never kept. The `cpu`
kernel sums the m + 1 last columns (Xᵀy, Σx, yᵀy, Σy, n) in float64 from the fp32
products, which are exact there: only XᵀX carries fp32 rounding (3x smaller R² error
for ~10% more time); the Triton kernel keeps all of it in fp32.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.backends import pick_backend
from ..core.checks import check_tensor
from ..core.files import load_torch
from ..ops.ridge_gram import FP32_ROUNDOFF, FP64_ROUNDOFF, ridge_gram


def _symmetric(upper: torch.Tensor) -> torch.Tensor:
    return torch.triu(upper) + torch.triu(upper, 1).mT


@dataclass
class Moments:
    """Centred statistics of one site: n, means, Σ(x−x̄)(x−x̄)ᵀ, Σ(x−x̄)(y−ȳ)ᵀ, Σ(y−ȳ)² (float64)."""

    n: float
    mean_x: torch.Tensor  # [d]
    mean_y: torch.Tensor  # [m]
    xx: torch.Tensor  # [d, d]
    xy: torch.Tensor  # [d, m]
    yy: torch.Tensor  # [m]

    def __add__(self, other: "Moments") -> "Moments":
        """Pooled moments of two disjoint samples (the parallel-axis form: no cancellation)."""
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        dx, dy = other.mean_x - self.mean_x, other.mean_y - self.mean_y
        c = self.n * other.n / n
        return Moments(n, self.mean_x + dx * (other.n / n), self.mean_y + dy * (other.n / n),
                       self.xx + other.xx + c * torch.outer(dx, dx), self.xy + other.xy + c * torch.outer(dx, dy),
                       self.yy + other.yy + c * dy * dy)


class RidgeAccumulator:
    """Sufficient statistics for ridge regressions of m targets on each of S sites' d-wide rows.

    update(x [S, N, d] (or [N, d] when S == 1), y [N, m] (or [N])) adds a batch; merge,
    reshift, state/from_state, save/load and all_reduce combine accumulators across
    batches, processes and machines. `moments(s)` hands site s to the solver.
    """

    def __init__(self, n_sites: int, d_model: int, n_targets: int, *, backend: str | None = None,
                 device: torch.device | str = "cpu"):
        for name, v in (("n_sites", n_sites), ("d_model", d_model), ("n_targets", n_targets)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        self.n_sites, self.d_model, self.n_targets, self.backend = n_sites, d_model, n_targets, backend
        D = d_model + n_targets + 1
        self.gram = torch.zeros(n_sites, D, D, dtype=torch.float64, device=device)
        self.shift_x = torch.zeros(n_sites, d_model, dtype=torch.float64, device=device)
        self.shift_y = torch.zeros(n_targets, dtype=torch.float64, device=device)
        self.roundoff = 0.0  # unit roundoff of the batch Grams added so far (sets the solver's rank cutoff)

    @property
    def n(self) -> int:
        return int(self.gram[0, -1, -1])

    def update(self, x: torch.Tensor, y: torch.Tensor) -> "RidgeAccumulator":
        S, d, m = self.n_sites, self.d_model, self.n_targets
        if isinstance(x, torch.Tensor) and x.dim() == 2 and S == 1:
            x = x[None]
        if isinstance(y, torch.Tensor) and y.dim() == 1:
            y = y[:, None]
        check_tensor("x", x, ndim=3, floating=True, finite=False)  # ridge_gram checks for NaN/Inf once
        check_tensor("y", y, ndim=2, floating=True)
        if tuple(x.shape[::2]) != (S, d):
            raise ValueError(f"x: expected [{S} sites, rows, {d}], got shape {tuple(x.shape)}")
        if y.shape[1] != m:
            raise ValueError(f"y: expected {m} target column(s), got shape {tuple(y.shape)}")
        if x.device != self.gram.device:
            raise ValueError(f"x: on {x.device}, the accumulator is on {self.gram.device}")
        if self.n == 0:  # the reference mean, exactly representable in float32
            shift_x = (x.sum(1, dtype=torch.float64) / x.shape[1]).float().double()
            if not bool(torch.isfinite(shift_x).all()):  # a NaN/Inf in x shows in its column's mean
                check_tensor("x", x)  # raises, with the count
            self.shift_x = shift_x
            self.shift_y = (y.sum(0, dtype=torch.float64) / y.shape[0]).float().double().to(x.device)
        backend = pick_backend(x.device, self.backend)
        ridge_gram(x, y.to(x.device), self.shift_x, self.shift_y, self.gram, backend=backend)
        self.roundoff = max(self.roundoff, FP64_ROUNDOFF if backend == "torch" else FP32_ROUNDOFF)
        return self

    def _reshifted(self, shift_x: torch.Tensor, shift_y: torch.Tensor) -> torch.Tensor:
        """The state re-expressed around other shifts: W' = W + 1δᵀ gives A' = A + aδᵀ + δaᵀ + nδδᵀ, a = Wᵀ1."""
        A = _symmetric(self.gram)
        delta = torch.cat([self.shift_x - shift_x, (self.shift_y - shift_y).expand(self.n_sites, -1),
                           torch.zeros_like(self.shift_x[:, :1])], -1)
        a = A[:, :, -1]
        outer = a[:, :, None] * delta[:, None, :]
        return torch.triu(A + outer + outer.mT + self.n * delta[:, :, None] * delta[:, None, :])

    def reshift(self, shift_x: torch.Tensor, shift_y: torch.Tensor) -> "RidgeAccumulator":
        """Move the state to new reference means (exact up to float64 rounding)."""
        shift_x = shift_x.to(self.gram).reshape(self.shift_x.shape)
        shift_y = shift_y.to(self.gram).reshape(self.shift_y.shape)
        self.gram = self._reshifted(shift_x, shift_y)
        self.shift_x, self.shift_y = shift_x.clone(), shift_y.clone()
        return self

    def _check_compatible(self, other) -> None:
        if not isinstance(other, RidgeAccumulator):
            raise ValueError(f"other: expected a RidgeAccumulator, got {type(other).__name__}")
        mine, theirs = (self.n_sites, self.d_model, self.n_targets), (other.n_sites, other.d_model, other.n_targets)
        if mine != theirs:
            raise ValueError(f"other: (sites, d_model, targets) {theirs} does not match {mine}")

    def merge(self, other: "RidgeAccumulator") -> "RidgeAccumulator":
        """Add other's statistics into this one (other is unchanged)."""
        self._check_compatible(other)
        if other.n == 0:
            return self
        if self.n == 0:
            self.gram, self.shift_x, self.shift_y = other.gram.clone(), other.shift_x.clone(), other.shift_y.clone()
        else:
            self.gram += other._reshifted(self.shift_x, self.shift_y)
        self.roundoff = max(self.roundoff, other.roundoff)
        return self

    def copy(self) -> "RidgeAccumulator":
        return RidgeAccumulator.from_state(self.state(), backend=self.backend)

    def state(self) -> dict[str, torch.Tensor]:
        """The whole state as float64 tensors: the sums (the Gram's upper triangle, row by row, as
        `gram_upper` [sites, D(D+1)/2]: half the size of the square) and the shifts they are around."""
        rows, cols = torch.triu_indices(*self.gram.shape[-2:], device=self.gram.device)
        return {"gram_upper": self.gram[:, rows, cols], "shift_x": self.shift_x, "shift_y": self.shift_y,
                "roundoff": torch.tensor(self.roundoff, dtype=torch.float64)}

    @classmethod
    def from_state(cls, state: dict, *, backend: str | None = None) -> "RidgeAccumulator":
        """From `state()` (or an older state holding the square `gram`)."""
        missing = {"shift_x", "shift_y", "roundoff"} - set(state)
        if "gram" not in state and "gram_upper" not in state:
            missing.add("gram_upper")
        if missing:
            raise ValueError(f"state: missing {sorted(missing)}")
        S, d = state["shift_x"].shape
        m = state["shift_y"].shape[0]
        D = d + m + 1
        sums = state.get("gram_upper", state.get("gram"))
        want = (S, D * (D + 1) // 2) if "gram_upper" in state else (S, D, D)
        if tuple(sums.shape) != want:
            raise ValueError(f"state: sums of shape {tuple(sums.shape)} do not fit {S} sites, d {d}, m {m}")
        acc = cls(S, d, m, backend=backend, device=sums.device)
        if "gram_upper" in state:
            rows, cols = torch.triu_indices(D, D, device=sums.device)
            acc.gram[:, rows, cols] = sums.double()
        else:
            acc.gram = torch.triu(sums.double()).contiguous()
        acc.shift_x, acc.shift_y = state["shift_x"].double().clone(), state["shift_y"].double().clone()
        acc.roundoff = float(state["roundoff"])
        return acc

    def save(self, path: str) -> None:
        torch.save({k: v.cpu() for k, v in self.state().items()}, path)

    @classmethod
    def load(cls, path: str, *, backend: str | None = None) -> "RidgeAccumulator":
        return cls.from_state(load_torch("path", path), backend=backend)

    def all_reduce(self, group=None) -> "RidgeAccumulator":
        """Sum the statistics over a torch.distributed group, in place on every rank.

        Every rank first moves to one common shift (the n-weighted mean of the ranks'
        shifts, rounded to float32), so a plain sum of the states is exact.
        """
        import torch.distributed as dist

        n = float(self.n)
        weighted = torch.cat([torch.tensor([n], dtype=torch.float64, device=self.gram.device),
                              n * self.shift_x.flatten(), n * self.shift_y])
        dist.all_reduce(weighted, group=group)
        total = float(weighted[0])
        if total == 0:
            return self
        common = (weighted[1:] / total).float().double()
        self.reshift(common[:self.shift_x.numel()], common[self.shift_x.numel():])
        dist.all_reduce(self.gram, group=group)
        roundoff = torch.tensor([self.roundoff], dtype=torch.float64, device=self.gram.device)
        dist.all_reduce(roundoff, op=dist.ReduceOp.MAX, group=group)
        self.roundoff = float(roundoff)
        return self

    def sums(self) -> dict[str, torch.Tensor]:
        """n, Σx [S, d], Σy [m], Σy² [m], XᵀX [S, d, d], Xᵀy [S, d, m] of the shifted data (x − shift_x, y − shift_y)."""
        A, d, m = _symmetric(self.gram), self.d_model, self.n_targets
        return {"n": A[0, -1, -1], "sum_x": A[:, :d, -1], "sum_y": A[0, d:d + m, -1],
                "sum_yy": torch.diagonal(A[0, d:d + m, d:d + m]), "xtx": A[:, :d, :d], "xty": A[:, :d, d:d + m]}

    def moments(self, site: int) -> Moments:
        """Centred float64 statistics of one site, for the solver."""
        if self.n == 0:
            raise ValueError("accumulator: no rows accumulated")
        d, m, n = self.d_model, self.n_targets, float(self.n)
        A = _symmetric(self.gram[site])
        su, sv = A[:d, -1], A[d:d + m, -1]
        return Moments(n, self.shift_x[site] + su / n, self.shift_y + sv / n, A[:d, :d] - torch.outer(su, su) / n,
                       A[:d, d:d + m] - torch.outer(su, sv) / n, torch.diagonal(A[d:d + m, d:d + m]) - sv * sv / n)
