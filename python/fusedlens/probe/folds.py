"""The one fold scheme of every probe: k training folds and a held-out part, each a RidgeAccumulator.

Rows go in by bucket (0..k-1: training folds, k: held out); `fit` chooses the penalty by
k-fold validation over the training folds, refits on all of them and reports R² on the
held-out part (solve.cross_validate). Two ways to assign buckets, both by whole
sequence so a sequence never straddles train and validation:
  * `after_training`: the held-out sequences follow the training ones in the corpus
    (`fusedlens probe`); training sequence i goes to fold i mod k;
  * `interleaved`: sequence i goes to bucket i mod (k + 1), the last bucket held out
    (`fusedlens run --probe`, whose corpus has no known end).
The buckets' sums are additive: saved, merged and all-reduced like any accumulator.
"""
from __future__ import annotations

import torch

from .accumulator import RidgeAccumulator
from .solve import DEFAULT_ALPHAS, cross_validate


class Folds:
    def __init__(self, folds: int, n_sites: int, d_model: int, n_targets: int, *, backend: str | None = None,
                 device: torch.device | str = "cpu"):
        if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
            raise ValueError(f"folds: expected an int >= 2, got {folds!r}")
        self.k = folds
        self.accs = [RidgeAccumulator(n_sites, d_model, n_targets, backend=backend, device=device)
                     for _ in range(folds + 1)]

    @staticmethod
    def after_training(index: int, folds: int, heldout: bool) -> int:
        return folds if heldout else index % folds

    @staticmethod
    def interleaved(index: int, folds: int) -> int:
        return index % (folds + 1)

    def add(self, bucket: int, x: torch.Tensor, y: torch.Tensor) -> None:
        self.accs[bucket].update(x, y)

    @property
    def complete(self) -> bool:
        """Every training fold and the held-out part have rows."""
        return all(acc.n > 0 for acc in self.accs)

    def fit(self, alphas=DEFAULT_ALPHAS, heldout: bool = True) -> list[list[dict]]:
        """[site][target] fit summaries (see solve.cross_validate)."""
        return cross_validate(self.accs[:self.k], self.accs[self.k] if heldout else None, alphas)

    def state(self) -> list[dict]:
        return [acc.state() for acc in self.accs]

    def load_state(self, states: list[dict]) -> None:
        if len(states) != self.k + 1:
            raise ValueError(f"probe state: expected {self.k + 1} buckets, got {len(states)}")
        self.accs = [RidgeAccumulator.from_state(s) for s in states]

    def all_reduce(self) -> None:
        for acc in self.accs:
            acc.all_reduce()
