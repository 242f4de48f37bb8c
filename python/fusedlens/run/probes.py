"""Ridge probes inside `fusedlens run`: the same forward feeds the lens and the probe sums.

Sequence i goes to bucket i mod (FOLDS + 1): buckets 0..FOLDS-1 are the training
folds (λ chosen by k-fold validation), the last bucket is held out, and R² on it is
reported per site and target, in closed form from its sums.
"""
from __future__ import annotations

import torch

from ..ops.stats import LensStats
from ..probe.folds import Folds
from ..probe.targets import TARGETS, final_targets

FOLDS = 5


class CorpusProbes:
    def __init__(self, lm, sites: list[str], targets: list[str]):
        unknown = [t for t in targets if t not in TARGETS]
        if unknown:
            raise ValueError(f"probe: unknown target(s) {unknown}; expected names from {TARGETS}")
        self.sites, self.targets = list(sites), list(dict.fromkeys(targets))
        self.folds = Folds(FOLDS, len(sites), lm.d_model, len(self.targets))

    def update(self, res, stats: LensStats, sequence_of_row: torch.Tensor) -> None:
        """Add a batch: its residuals, and targets taken from the lens statistics of the same pass."""
        has = res.targets >= 0  # the correct next token is what every built-in target is about
        rows = has.nonzero()[:, 0]
        y_all = torch.cat([c.float().cpu() for c in final_targets(self.targets, stats, rows.to(stats.lse.device))], 1)
        bucket = torch.tensor([Folds.interleaved(int(i), FOLDS) for i in sequence_of_row[rows]])
        for b in bucket.unique().tolist():
            pick = bucket == b
            self.folds.add(b, res.hidden[:, rows[pick]].float(), y_all[pick])

    def state_dict(self) -> list[dict]:
        return self.folds.state()

    def load_state_dict(self, states: list[dict]) -> None:
        self.folds.load_state(states)

    def all_reduce(self) -> None:
        self.folds.all_reduce()

    def summary_by_site(self) -> list[dict]:
        """Per site: held-out / validation / train R², chosen α and n for each target."""
        if not self.folds.complete:
            return [{"probe": f"too few sequences for {FOLDS} folds + a held-out part"} for _ in self.sites]
        fits = self.folds.fit()
        rows = []
        for per_target in fits:
            row = {}
            for name, fit in zip(self.targets, per_target):
                row.update({f"probe_{name}_r2_heldout": fit["r2_heldout"], f"probe_{name}_r2_val": fit["r2_val"],
                            f"probe_{name}_r2_train": fit["r2_train"], f"probe_{name}_alpha": fit["alpha"],
                            f"probe_{name}_n_train": fit["n_train"], f"probe_{name}_n_heldout": fit["n_heldout"]})
            rows.append(row)
        return rows
