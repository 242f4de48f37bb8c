"""Guess-then-refine sums of one lens over a corpus (seed 002), additive like every other sum.

Per site ℓ and frequency bucket b (refine.frequency):
  * top1[ℓ, b]: tokens whose top-1 at ℓ is in b (its share against the share of b among
    the corpus' actual next tokens, target[b]);
  * final_differs[ℓ, b], changes_later[ℓ, b]: of those, the ones whose final top-1 is
    another token, and the ones whose top-1 changes at some later site (the refine rates);
  * mass[ℓ, b]: Σ over tokens of the probability the lens puts on b (token-set mass from
    the same sweep: the buckets but the last are sets, the last is 1 − their sum);
  * depth[ℓ]: tokens whose depth to the correct answer is ℓ: the earliest site from which
    the top-1 is the true next token and stays so; depth[S] counts the tokens the model
    never gets right (the final top-1 is wrong).
"""
from __future__ import annotations

import torch

from ..ops.stats import LensStats


def depth_to_correct(top1: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[tokens]: the first site from which top1 [sites, tokens] equals the target at every later site;
    sites (one past the last) where the final top-1 is wrong."""
    S = top1.shape[0]
    agree = (top1 == targets[None, :].to(top1.device)).to(torch.int64)
    stays = agree.flip(0).cumprod(0).flip(0)  # 1 where this and every later site agree
    return S - stays.sum(0)


def changes_later(top1: torch.Tensor) -> torch.Tensor:
    """[sites, tokens]: whether some later site's top-1 differs from this site's."""
    S = top1.shape[0]
    out = torch.zeros_like(top1, dtype=torch.bool)
    for s in range(S - 1):
        out[s] = (top1[s + 1:] != top1[s]).any(0)
    return out


class RefineSums:
    def __init__(self, n_sites: int, bucket_of: torch.Tensor, n_buckets: int):
        self.n_sites, self.n_buckets = n_sites, n_buckets
        self.bucket_of = bucket_of.long().cpu()
        z = lambda *shape: torch.zeros(*shape, dtype=torch.int64)  # noqa: E731
        self.top1, self.final_differs, self.changes_later = z(n_sites, n_buckets), z(n_sites, n_buckets), \
            z(n_sites, n_buckets)
        self.target, self.depth = z(n_buckets), z(n_sites + 1)
        self.mass = torch.zeros(n_sites, n_buckets, dtype=torch.float64)
        self.n = 0

    def token_sets(self) -> torch.Tensor:
        """The set ids lens_stats takes: every bucket but the last (whose mass is the rest)."""
        return torch.where(self.bucket_of < self.n_buckets - 1, self.bucket_of, -1)

    def update(self, stats: LensStats, targets: torch.Tensor) -> "RefineSums":
        """A batch's statistics (last site = the final layer, set_mass from token_sets()) and next-token
        ids [tokens] (negative: none; such tokens are skipped)."""
        if stats.set_mass is None or stats.set_mass.shape[-1] != self.n_buckets - 1:
            raise ValueError(f"stats: expected set_mass of the {self.n_buckets - 1} first buckets "
                             "(lens_stats(..., token_sets=RefineSums.token_sets()))")
        targets = targets.reshape(-1).cpu()
        keep = targets >= 0
        top1 = stats.top1.cpu()[:, keep]
        t = targets[keep]
        B = self.n_buckets
        b = self.bucket_of[top1]  # [S, T]
        flat = lambda mask: torch.bincount((torch.arange(self.n_sites)[:, None] * B + b)[mask],  # noqa: E731
                                           minlength=self.n_sites * B).reshape(self.n_sites, B)
        every = torch.ones_like(top1, dtype=torch.bool)
        self.top1 += flat(every)
        self.final_differs += flat(top1 != top1[-1:])
        self.changes_later += flat(changes_later(top1))
        self.target += torch.bincount(self.bucket_of[t], minlength=B)
        self.depth += torch.bincount(depth_to_correct(top1, t), minlength=self.n_sites + 1)
        m = stats.set_mass.cpu()[:, keep].double()
        self.mass[:, :B - 1] += m.sum(1)
        self.mass[:, B - 1] += (1 - m.sum(-1)).sum(1)
        self.n += int(keep.sum())
        return self

    def state(self) -> dict:
        return {k: getattr(self, k) for k in ("top1", "final_differs", "changes_later", "target", "depth", "mass")} \
            | {"n": torch.tensor(self.n)}

    def load_state(self, state: dict) -> None:
        for k in ("top1", "final_differs", "changes_later", "target", "depth", "mass"):
            setattr(self, k, state[k].clone())
        self.n = int(state["n"])

    def merge(self, other: "RefineSums") -> "RefineSums":
        for k in ("top1", "final_differs", "changes_later", "target", "depth", "mass"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.n += other.n
        return self

    def summary(self, sites: list[str], names: list[str]) -> dict:
        """Shares and rates per site and bucket (None where a bucket has no top-1 at a site)."""
        n = max(self.n, 1)
        rate = lambda a, b: [[float(x) / int(y) if int(y) else None for x, y in zip(r, q)]  # noqa: E731
                             for r, q in zip(a, b)]
        return {"buckets": names, "tokens": self.n, "target_share": (self.target.double() / n).tolist(),
                "sites": sites,
                "top1_share": (self.top1.double() / n).tolist(), "mass": (self.mass / n).tolist(),
                "final_differs_rate": rate(self.final_differs, self.top1),
                "changes_later_rate": rate(self.changes_later, self.top1),
                "depth_to_correct_hist": self.depth.tolist(),
                "never_correct_share": float(self.depth[-1]) / n}
