"""Guess-then-refine sums of one lens over a corpus (Gupta et al. 2025), additive like every other sum.

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
    def __init__(self, n_sites: int, bucket_of: torch.Tensor, n_buckets: int, class_of: torch.Tensor | None = None,
                 n_classes: int = 0):
        self.n_sites, self.n_buckets, self.n_classes = n_sites, n_buckets, n_classes
        self.bucket_of = bucket_of.long().cpu()
        self.class_of = None if class_of is None else class_of.long().cpu()
        # depth to correct by the class of the true next token (class ids -1: counted in no class)
        self.depth_by_class = torch.zeros(n_classes, n_sites + 1, dtype=torch.int64)
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
        depth = depth_to_correct(top1, t)
        self.depth += torch.bincount(depth, minlength=self.n_sites + 1)
        if self.class_of is not None:
            c = self.class_of[t]
            has = c >= 0
            self.depth_by_class += torch.bincount(c[has] * (self.n_sites + 1) + depth[has],
                                                  minlength=self.n_classes * (self.n_sites + 1)
                                                  ).reshape(self.n_classes, self.n_sites + 1)
        m = stats.set_mass.cpu()[:, keep].double()
        self.mass[:, :B - 1] += m.sum(1)
        self.mass[:, B - 1] += (1 - m.sum(-1)).sum(1)
        self.n += int(keep.sum())
        return self

    SUMS = ("top1", "final_differs", "changes_later", "target", "depth", "mass", "depth_by_class")

    def state(self) -> dict:
        return {k: getattr(self, k) for k in self.SUMS} | {"n": torch.tensor(self.n)}

    def load_state(self, state: dict) -> None:
        for k in self.SUMS:
            setattr(self, k, state[k].clone())
        self.n = int(state["n"])

    def all_reduce(self, group=None) -> "RefineSums":
        import torch.distributed as dist

        for k in self.SUMS:
            dist.all_reduce(getattr(self, k), group=group)
        n = torch.tensor([self.n], dtype=torch.int64)
        dist.all_reduce(n, group=group)
        self.n = int(n)
        return self

    def merge(self, other: "RefineSums") -> "RefineSums":
        for k in self.SUMS:
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.n += other.n
        return self

    def summary(self, sites: list[str], names: list[str], class_names: list[str] = ()) -> dict:
        """Shares and rates per site and bucket (None where a bucket has no top-1 at a site); depth to
        correct per class: the histogram, the share never right, the mean depth of the ones right."""
        n = max(self.n, 1)
        rate = lambda a, b: [[float(x) / int(y) if int(y) else None for x, y in zip(r, q)]  # noqa: E731
                             for r, q in zip(a, b)]
        return {"buckets": names, "tokens": self.n, "target_share": (self.target.double() / n).tolist(),
                "sites": sites,
                "top1_share": (self.top1.double() / n).tolist(), "mass": (self.mass / n).tolist(),
                "final_differs_rate": rate(self.final_differs, self.top1),
                "changes_later_rate": rate(self.changes_later, self.top1),
                "depth_to_correct_hist": self.depth.tolist(),
                "never_correct_share": float(self.depth[-1]) / n,
                "depth_by_class": {name: depth_summary(h) for name, h in zip(class_names, self.depth_by_class)}}


def depth_summary(hist: torch.Tensor) -> dict:
    """A depth-to-correct histogram [sites + 1] (last: never right) with its token count, the share
    never right and the mean depth of the tokens that are."""
    n = int(hist.sum())
    right = hist[:-1]
    n_right = int(right.sum())
    mean = float((right * torch.arange(right.numel())).sum()) / n_right if n_right else None
    return {"tokens": n, "hist": hist.tolist(), "never_correct_share": float(hist[-1]) / n if n else None,
            "mean_depth_when_correct": mean}
