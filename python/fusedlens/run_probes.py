"""Ridge probes inside `fusedlens run`: the same forward feeds the lens and the probe sums.

Sequence i goes to bucket i mod (FOLDS + 1): buckets 0..FOLDS-1 are the training
folds (λ chosen by k-fold validation), the last bucket is held out, and R² on it is
reported per site and target, in closed form from its sums.
"""
from __future__ import annotations

import torch

from .probe import TARGETS, TargetMaker
from .ridge import RidgeAccumulator
from .ridge_solve import cross_validate

FOLDS = 5


class CorpusProbes:
    def __init__(self, lm, sites: list[str], targets: list[str]):
        unknown = [t for t in targets if t not in TARGETS]
        if unknown:
            raise ValueError(f"probe: unknown target(s) {unknown}; expected names from {TARGETS}")
        self.sites, self.targets = list(sites), list(dict.fromkeys(targets))
        self.make = TargetMaker(lm, self.targets, None, 0)
        self.accs = [RidgeAccumulator(len(sites), lm.d_model, len(self.targets)) for _ in range(FOLDS + 1)]

    def update(self, res, sequence_of_row: torch.Tensor) -> None:
        has = res.targets >= 0  # the correct next token is what every built-in target is about
        bucket = sequence_of_row % (FOLDS + 1)
        y_all = self.make(res, has, torch.zeros(int(has.sum()), dtype=torch.long))
        rows = has.nonzero()[:, 0]
        for b in bucket[rows].unique().tolist():
            pick = bucket[rows] == b
            self.accs[b].update(res.hidden[:, rows[pick]].float(), y_all[pick])

    def state_dict(self) -> list[dict]:
        return [acc.state() for acc in self.accs]

    def load_state_dict(self, states: list[dict]) -> None:
        self.accs = [RidgeAccumulator.from_state(s) for s in states]

    def all_reduce(self) -> None:
        for acc in self.accs:
            acc.all_reduce()

    def summary_by_site(self) -> list[dict]:
        """Per site: held-out / validation / train R², chosen α and n for each target."""
        if any(acc.n == 0 for acc in self.accs):
            return [{"probe": f"too few sequences for {FOLDS} folds + a held-out part"} for _ in self.sites]
        fits = cross_validate(self.accs[:FOLDS], self.accs[FOLDS])
        rows = []
        for per_target in fits:
            row = {}
            for name, fit in zip(self.targets, per_target):
                row.update({f"probe_{name}_r2_heldout": fit["r2_heldout"], f"probe_{name}_r2_val": fit["r2_val"],
                            f"probe_{name}_r2_train": fit["r2_train"], f"probe_{name}_alpha": fit["alpha"],
                            f"probe_{name}_n_train": fit["n_train"], f"probe_{name}_n_heldout": fit["n_heldout"]})
            rows.append(row)
        return rows
