"""Ridge probes in the corpus pass (`fusedlens run --probe`): the same forward feeds the lens and the probe sums.

Sequence i goes to bucket i mod (FOLDS + 1): buckets 0..FOLDS-1 are the training
folds (λ chosen by k-fold validation), the last bucket is held out, and R² on it is
reported per site, target and lag, in closed form from its sums. A lag is an index
shift inside each sequence of the batch (probe.rows), as in `fusedlens probe`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.analysis import CorpusAnalysis, CorpusBatch, CorpusPass
from ..core.fields import option
from .folds import Folds
from .rows import check_lags, lag_names, lagged, sequence_lengths
from .targets import TARGETS, final_targets

FOLDS = 5


@dataclass(kw_only=True)
class ProbeOptions:
    probes: list[str] = option([], "ridge probe target (repeatable): logit (of the correct next token), logprob, "
                                   "entropy, loss", flag="--probe")
    probe_lags: list[int] = option([0], "lag K of the probes (repeatable): x_t against the target of position t+K "
                                        "of its sequence (-1: the next token's logit read at the token itself)",
                                   flag="--lag")


class CorpusProbes(CorpusAnalysis):
    name = "probes"
    Options = ProbeOptions

    @classmethod
    def build(cls, cfg, corpus_pass: CorpusPass) -> "CorpusProbes | None":
        return cls(corpus_pass.lm, corpus_pass.sites, cfg.probes, cfg.probe_lags) if cfg.probes else None

    def __init__(self, lm, sites: list[str], targets: list[str], lags=(0,)):
        unknown = [t for t in targets if t not in TARGETS]
        if unknown:
            raise ValueError(f"probe: unknown target(s) {unknown}; expected names from {TARGETS}")
        self.sites, self.targets, self.lags = list(sites), list(dict.fromkeys(targets)), check_lags(lags)
        self.names = lag_names(self.targets, self.lags)
        self.folds = Folds(FOLDS, len(sites), lm.d_model, len(self.names))

    def update(self, batch: CorpusBatch) -> None:
        """Add a batch: its residuals, and targets taken from the lens statistics of the same pass
        (NaN at each sequence's last token, which has no next token; then shifted by each lag)."""
        res, stats, sequence_of_row = batch.residuals, batch.stats, batch.sequence
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

    def merge(self, other: "CorpusProbes") -> None:
        self.folds.merge(other.folds)

    def all_reduce(self) -> None:
        self.folds.all_reduce()

    def summary(self, rows: list[dict]) -> dict:
        """Per site: held-out / validation / train R², chosen α and n for each target."""
        if not self.folds.complete:
            for row in rows:
                row["probe"] = f"too few sequences for {FOLDS} folds + a held-out part"
            return {}
        fits = self.folds.fit(names=self.names)
        for row, per_target in zip(rows, fits):
            for name, fit in zip(self.names, per_target):
                row.update({f"probe_{name}_r2_heldout": fit["r2_heldout"], f"probe_{name}_r2_val": fit["r2_val"],
                            f"probe_{name}_r2_train": fit["r2_train"], f"probe_{name}_alpha": fit["alpha"],
                            f"probe_{name}_n_train": fit["n_train"], f"probe_{name}_n_heldout": fit["n_heldout"]})
        return {}
