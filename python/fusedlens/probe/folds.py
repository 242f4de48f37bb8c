"""The one fold scheme of every probe: k training folds and a held-out part, over rows whose targets may be missing.

Rows go in by bucket (0..k-1: training folds, k: held out); `fit` chooses the penalty by
k-fold validation over the training folds, refits on all of them and reports on the
held-out part (solve.cross_validate_parts). Two ways to assign buckets, both by whole
sequence so a sequence never straddles train and validation:
  * `after_training`: the held-out sequences follow the training ones in the corpus
    (`fusedlens probe`); training sequence i goes to fold i mod k;
  * `interleaved`: sequence i goes to bucket i mod (k + 1), the last bucket held out
    (`fusedlens run --probe`, whose corpus has no known end).

Missing targets. y is NaN where a row has no value for a target (a lag past the
sequence's edge, a null user value, an unselected position). Each target's fit uses
exactly its own rows, yet each row is accumulated once: rows are grouped by which
targets they have (their pattern), one RidgeAccumulator per pattern holds every
column (absent values filled in, never read), and a target's statistics are the sum
of the patterns that have it (Moments add exactly). Lags make a few small patterns (the
sequence edges); the Gram work stays one per row.
The buckets' sums are additive: saved, merged and all-reduced like any accumulator.
"""
from __future__ import annotations

import torch

from .accumulator import Moments, RidgeAccumulator
from .solve import DEFAULT_ALPHAS, check_alphas, cross_validate_parts, default_rcond, map_sites, pool


def _pattern_key(present: torch.Tensor) -> str:
    return "".join("1" if p else "0" for p in present.tolist())


class Folds:
    def __init__(self, folds: int, n_sites: int, d_model: int, n_targets: int, *, backend: str | None = None,
                 device: torch.device | str = "cpu"):
        if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
            raise ValueError(f"folds: expected an int >= 2, got {folds!r}")
        self.k, self.n_sites, self.d_model, self.n_targets = folds, n_sites, d_model, n_targets
        self.backend, self.device = backend, device
        self.buckets: list[dict[str, RidgeAccumulator]] = [{} for _ in range(folds + 1)]

    @staticmethod
    def after_training(index: int, folds: int, heldout: bool) -> int:
        return folds if heldout else index % folds

    @staticmethod
    def interleaved(index: int, folds: int) -> int:
        return index % (folds + 1)

    def _acc(self, bucket: int, key: str) -> RidgeAccumulator:
        accs = self.buckets[bucket]
        if key not in accs:
            accs[key] = RidgeAccumulator(self.n_sites, self.d_model, self.n_targets, backend=self.backend,
                                         device=self.device)
        return accs[key]

    def add(self, bucket: int, x: torch.Tensor, y: torch.Tensor) -> None:
        """x [S, rows, d]; y [rows, m] with NaN for a missing value (a row with none is skipped)."""
        if y.dim() == 1:
            y = y[:, None]
        present = ~torch.isnan(y)
        if bool(present.all()):
            self._acc(bucket, "1" * y.shape[1]).update(x, y)
            return
        keys, inverse = torch.unique(present, dim=0, return_inverse=True)
        for i, key in enumerate(keys):
            if not bool(key.any()):
                continue
            rows = (inverse == i).nonzero()[:, 0]
            part = y[rows].nan_to_num(0.0)  # absent columns of this pattern: never read
            first, n = int(rows[0]), rows.numel()
            # a lag's pattern is a run of rows: a view, not a copy of [sites, rows, d]
            xs = x.narrow(1, first, n) if int(rows[-1]) - first + 1 == n else x[:, rows.to(x.device)]
            self._acc(bucket, _pattern_key(key)).update(xs, part)

    def rows(self, bucket: int, column: int) -> int:
        return sum(acc.n for key, acc in self.buckets[bucket].items() if key[column] == "1")

    @property
    def complete(self) -> bool:
        """Every training fold and the held-out part have rows for every target."""
        return all(self.rows(b, j) > 0 for b in range(self.k + 1) for j in range(self.n_targets))

    def moments(self, bucket: int, site: int, columns: list[int]) -> Moments | None:
        """The pooled statistics of the rows that have `columns` (all of them share their patterns)."""
        total = None
        for key, acc in sorted(self.buckets[bucket].items()):
            if key[columns[0]] == "1" and acc.n > 0:
                m = acc.moments(site)
                m = Moments(m.n, m.mean_x, m.mean_y[columns], m.xx, m.xy[:, columns], m.yy[columns])
                total = m if total is None else total + m
        return total

    def column_groups(self) -> list[list[int]]:
        """Targets with the same rows (the same set of patterns), which share one eigendecomposition per site."""
        groups: dict[tuple, list[int]] = {}
        for j in range(self.n_targets):
            sig = tuple(sorted(key for b in self.buckets for key in b if key[j] == "1"))
            groups.setdefault(sig, []).append(j)
        return list(groups.values())

    def roundoff(self) -> float:
        return max([acc.roundoff for b in self.buckets for acc in b.values()], default=0.0)

    def fit(self, alphas=DEFAULT_ALPHAS, heldout: bool = True, names: list[str] | None = None,
            shared_alpha: list[list[int]] = (), only: list[int] | None = None) -> list[list[dict]]:
        """[site][target] fit summaries (see solve.cross_validate_parts; None for columns not in `only`).
        Columns listed together in `shared_alpha` (a class's one-hot columns) get one penalty, chosen
        by their summed validation SSE."""
        alphas = check_alphas(alphas)
        names = names or [str(j) for j in range(self.n_targets)]
        out = [[None] * self.n_targets for _ in range(self.n_sites)]
        rcond = default_rcond(self.roundoff())
        wanted = set(range(self.n_targets) if only is None else only)
        for cols in self.column_groups():
            cols = [j for j in cols if j in wanted]
            if not cols:
                continue
            for b in range(self.k + (1 if heldout else 0)):
                if self.rows(b, cols[0]) == 0:
                    part = f"fold {b}" if b < self.k else "the held-out part"
                    raise ValueError(f"target {names[cols[0]]!r}: {part} has no rows")
            shared = [[cols.index(j) for j in g] for g in shared_alpha if set(g) <= set(cols)]

            def site_fit(s, cols=cols, shared=shared):
                parts = [self.moments(b, s, cols) for b in range(self.k)]
                held = self.moments(self.k, s, cols) if heldout else None
                return cross_validate_parts(parts, held, alphas, rcond, shared)

            for s, fits in enumerate(map_sites(site_fit, self.n_sites)):
                for j, fit in zip(cols, fits):
                    out[s][j] = fit
        return out

    def training_moments(self, site: int, columns: list[int]) -> Moments:
        return pool([self.moments(b, site, columns) for b in range(self.k)])

    def state(self) -> list[dict]:
        return [{key: acc.state() for key, acc in b.items()} for b in self.buckets]

    def merge(self, other: "Folds") -> None:
        """Add other's sums, bucket by bucket and row pattern by row pattern (other unchanged)."""
        for b, bucket in enumerate(other.buckets):
            for key, acc in bucket.items():
                self._acc(b, key).merge(acc)

    def load_state(self, states: list[dict]) -> None:
        if len(states) != self.k + 1:
            raise ValueError(f"probe state: expected {self.k + 1} buckets, got {len(states)}")
        if states and ("gram_upper" in states[0] or "gram" in states[0]):  # one accumulator per bucket (0.2)
            states = [{"1" * self.n_targets: s} for s in states]
        self.buckets = [{key: RidgeAccumulator.from_state(s, backend=self.backend) for key, s in b.items()}
                        for b in states]

    def all_reduce(self) -> None:
        """Sum over the ranks of torch.distributed: every rank first creates the patterns any rank has."""
        import torch.distributed as dist

        keys = [sorted(b) for b in self.buckets]
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, keys)
        for b, bucket in enumerate(self.buckets):
            for key in sorted({k for rank in everyone for k in rank[b]}):
                self._acc(b, key).all_reduce()

