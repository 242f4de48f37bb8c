"""ClassStats: streamed per-site statistics of two classes of residual rows and of paired differences.

Three `probe.RidgeAccumulator`s hold everything (one y column of zeros each: the accumulator's
target column is unused here, its Gram is d + 2 wide): the positive rows, the negative rows and
the paired differences. Each batch's Gram is the fp32 `ops.ridge_gram` of rows shifted by a
float32 reference mean, added into float64 totals; merge, save/load and `all_reduce` (every rank
moves to one common shift, then the float64 sums are added) are the accumulator's own. Keeping the
classes apart gives each class's scatter around its own mean (no T − B cancellation) and the
pooled within-class scatter as their sum.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.checks import check_tensor
from ..core.files import load_torch
from ..probe import RidgeAccumulator

PARTS = ("pos", "neg", "pairs")


@dataclass
class SiteStats:
    """Float64 statistics of one site: class counts and means, the pooled within-class scatter
    Σ_c Σ_{i∈c} (x_i − μ_c)(x_i − μ_c)ᵀ, and over the paired differences δ their count, mean and
    uncentred second moment Σ δδᵀ."""

    n_pos: int
    n_neg: int
    mean_pos: torch.Tensor  # [d]
    mean_neg: torch.Tensor  # [d]
    scatter: torch.Tensor  # [d, d]
    n_pairs: int
    mean_diff_pairs: torch.Tensor  # [d]
    pair_moment: torch.Tensor  # [d, d]
    roundoff: float = 2.0 ** -53  # unit roundoff of the class Grams (sets the rank cutoff)


class ClassStats:
    """update(x [S, N, d], labels [N] (1/True = positive)) adds rows; update_pairs(diff [S, P, d]) adds
    paired differences (positive minus negative); site(s) returns a SiteStats."""

    def __init__(self, n_sites: int, d_model: int, *, backend: str | None = None, device="cpu"):
        self.n_sites, self.d_model, self.backend = n_sites, d_model, backend
        self.acc = {p: RidgeAccumulator(n_sites, d_model, 1, backend=backend, device=device) for p in PARTS}

    def counts(self) -> dict[str, int]:
        return {p: a.n for p, a in self.acc.items()}

    def _add(self, part: str, x: torch.Tensor) -> None:
        if x.shape[1]:
            self.acc[part].update(x, x.new_zeros(x.shape[1], 1, dtype=torch.float32))

    def _check(self, name: str, x) -> torch.Tensor:
        S, d = self.n_sites, self.d_model
        if isinstance(x, torch.Tensor) and x.dim() == 2 and S == 1:
            x = x[None]
        check_tensor(name, x, ndim=3, floating=True)  # a NaN/Inf residual: one line, nothing added
        if x.shape[0] != S or x.shape[2] != d:
            raise ValueError(f"{name}: expected [{S} sites, rows, {d}], got shape {tuple(x.shape)}")
        return x

    def update(self, x: torch.Tensor, labels) -> "ClassStats":
        x = self._check("x", x)
        labels = torch.as_tensor(labels).to(x.device)
        if labels.shape != (x.shape[1],):
            raise ValueError(f"labels: expected one label per row ({x.shape[1]}), got shape {tuple(labels.shape)}")
        if not bool(((labels == 0) | (labels == 1)).all()):
            raise ValueError("labels: expected 0/1 (or booleans): 1 = positive class")
        pos = labels.bool()
        self._add("pos", x[:, pos])
        self._add("neg", x[:, ~pos])
        return self

    def update_pairs(self, diff: torch.Tensor) -> "ClassStats":
        self._add("pairs", self._check("diff", diff))
        return self

    def merge(self, other: "ClassStats") -> "ClassStats":
        if not isinstance(other, ClassStats) or (other.n_sites, other.d_model) != (self.n_sites, self.d_model):
            raise ValueError(f"other: expected ClassStats of {self.n_sites} sites, d {self.d_model}")
        for p in PARTS:
            self.acc[p].merge(other.acc[p])
        return self

    def all_reduce(self, group=None) -> "ClassStats":
        """Sum over a torch.distributed group, in place on every rank (each part as RidgeAccumulator does)."""
        for p in PARTS:
            self.acc[p].all_reduce(group)
        return self

    def state(self) -> dict:
        return {p: self.acc[p].state() for p in PARTS}

    @classmethod
    def from_state(cls, state: dict, *, backend: str | None = None) -> "ClassStats":
        if not isinstance(state, dict) or set(state) != set(PARTS):
            raise ValueError(f"state: expected the parts {PARTS}")
        accs = {p: RidgeAccumulator.from_state(state[p], backend=backend) for p in PARTS}
        out = cls(accs["pos"].n_sites, accs["pos"].d_model, backend=backend, device=accs["pos"].gram.device)
        out.acc = accs
        return out

    def save(self, path: str) -> None:
        torch.save({p: {k: v.cpu() for k, v in s.items()} for p, s in self.state().items()}, path)

    @classmethod
    def load(cls, path: str, *, backend: str | None = None) -> "ClassStats":
        return cls.from_state(load_torch("path", path), backend=backend)

    def site(self, s: int) -> SiteStats:
        for p in ("pos", "neg"):
            if self.acc[p].n == 0:
                raise ValueError(f"{p}: no rows of the {'positive' if p == 'pos' else 'negative'} class accumulated")
        mp, mn = self.acc["pos"].moments(s), self.acc["neg"].moments(s)
        d = self.d_model
        if self.acc["pairs"].n:
            pm = self.acc["pairs"].moments(s)
            n_pairs, mean_d = int(pm.n), pm.mean_x
            moment = pm.xx + pm.n * torch.outer(mean_d, mean_d)  # Σδδᵀ = centred scatter + n δ̄δ̄ᵀ
        else:
            n_pairs, mean_d, moment = 0, mp.mean_x.new_zeros(d), mp.xx.new_zeros(d, d)
        return SiteStats(int(mp.n), int(mn.n), mp.mean_x, mn.mean_x, mp.xx + mn.xx, n_pairs, mean_d, moment,
                         max(self.acc["pos"].roundoff, self.acc["neg"].roundoff))
