"""Ridge probes inside `fusedlens run`: the same forward feeds the lens and the probe sums.

Sequence i goes to bucket i mod (FOLDS + 1): buckets 0..FOLDS-1 are the training
folds (λ chosen by k-fold validation), the last bucket is held out, and R² on it is
reported per site, target and lag, in closed form from its sums. A lag is an index
shift inside each sequence of the batch (probe.rows), as in `fusedlens probe`.
"""
from __future__ import annotations

import torch

from ..ops.stats import LensStats
from ..probe.folds import Folds
from ..probe.rows import check_lags, lag_names, lagged, sequence_lengths
from ..probe.targets import TARGETS, final_targets

FOLDS = 5


class CorpusProbes:
    def __init__(self, lm, sites: list[str], targets: list[str], lags=(0,)):
        unknown = [t for t in targets if t not in TARGETS]
        if unknown:
            raise ValueError(f"probe: unknown target(s) {unknown}; expected names from {TARGETS}")
        self.sites, self.targets, self.lags = list(sites), list(dict.fromkeys(targets)), check_lags(lags)
        self.names = lag_names(self.targets, self.lags)
        self.folds = Folds(FOLDS, len(sites), lm.d_model, len(self.names))

    def update(self, res, stats: LensStats, sequence_of_row: torch.Tensor) -> None:
        """Add a batch: its residuals, and targets taken from the lens statistics of the same pass
        (NaN at each sequence's last token, which has no next token; then shifted by each lag)."""
        every = torch.ones_like(res.targets, dtype=torch.bool).to(stats.lse.device)
        base = torch.cat([c.float().cpu() for c in final_targets(self.targets, stats, every)], 1)
        base[res.targets.cpu() < 0] = float("nan")  # entropy too: a row is a token with a next one, as at lag 0
        seq = res.batch_index.cpu()
        position, length = res.position.cpu(), sequence_lengths(seq)
        y_all = torch.cat([lagged(base, position, length, k) for k in self.lags], 1)
        bucket = torch.tensor([Folds.interleaved(int(i), FOLDS) for i in sequence_of_row.cpu()])
        for b in bucket.unique().tolist():
            pick = (bucket == b).nonzero()[:, 0]
            self.folds.add(b, res.hidden[:, pick.to(res.hidden.device)].float(), y_all[pick])

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
        fits = self.folds.fit(names=self.names)
        rows = []
        for per_target in fits:
            row = {}
            for name, fit in zip(self.names, per_target):
                row.update({f"probe_{name}_r2_heldout": fit["r2_heldout"], f"probe_{name}_r2_val": fit["r2_val"],
                            f"probe_{name}_r2_train": fit["r2_train"], f"probe_{name}_alpha": fit["alpha"],
                            f"probe_{name}_n_train": fit["n_train"], f"probe_{name}_n_heldout": fit["n_heldout"]})
            rows.append(row)
        return rows
