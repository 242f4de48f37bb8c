"""Per-site aggregates of lens statistics over a corpus, as additive running sums.

Every field is a sum or a count (ranks as exact histograms, so medians stay exact),
so aggregates merge across batches, checkpoints and processes by addition:
`merge` locally, `all_reduce` under torch.distributed.
"""
from __future__ import annotations

import torch

from ..ops.stats import LensStats

_SCALARS = ("tokens", "targets", "depth_sum")
_PER_SITE = {"kl": torch.float64, "entropy": torch.float64, "top1_agree": torch.int64, "correct": torch.int64,
             "target_logprob": torch.float64, "settled": torch.int64}


def _hist_median(hist: torch.Tensor) -> float:
    """The usual median (mean of the two middle values) of the values whose counts are hist."""
    n = int(hist.sum())
    if n == 0:
        return float("nan")
    cum = hist.cumsum(0)
    lo = int(torch.searchsorted(cum, (n - 1) // 2 + 1))
    hi = int(torch.searchsorted(cum, n // 2 + 1))
    return (lo + hi) / 2


class LensAggregate:
    """Running per-site sums of `LensStats` for sites (last = final) over a vocabulary of vocab_size."""

    def __init__(self, sites: list[str], vocab_size: int):
        if not sites:
            raise ValueError("sites: need at least one site")
        self.sites, self.vocab_size = list(sites), int(vocab_size)
        S = len(self.sites)
        self.state = {name: torch.zeros(1, dtype=torch.int64) for name in _SCALARS}
        self.state.update({name: torch.zeros(S, dtype=dt) for name, dt in _PER_SITE.items()})
        self.state["target_rank_hist"] = torch.zeros(S, self.vocab_size, dtype=torch.int64)
        self.state["final_rank_hist"] = torch.zeros(S, self.vocab_size, dtype=torch.int64)

    def update(self, stats: LensStats, targets: torch.Tensor | None = None) -> "LensAggregate":
        """Add the rows of one batch: stats [sites, tokens], targets [tokens] (< 0: none)."""
        S, V = len(self.sites), self.vocab_size
        if stats.lse.shape[0] != S:
            raise ValueError(f"stats: expected {S} sites, got {stats.lse.shape[0]}")
        st, top1 = self.state, stats.top1.cpu()
        N = top1.shape[1]
        st["tokens"] += N
        st["kl"] += stats.kl_to_final.cpu().double().sum(1)
        st["entropy"] += stats.entropy.cpu().double().sum(1)
        st["top1_agree"] += (top1 == top1[-1]).sum(1)
        depth = stats.prediction_depth.cpu()
        st["settled"] += (depth[None, :] <= torch.arange(S)[:, None]).sum(1)
        st["depth_sum"] += depth.sum()
        st["final_rank_hist"] += _histograms(stats.final_top1_rank.cpu(), V)
        if targets is not None and stats.target_rank is not None:
            has = targets.cpu() >= 0
            st["targets"] += int(has.sum())
            st["correct"] += (top1[:, has] == targets.cpu()[has]).sum(1)
            st["target_logprob"] += stats.target_logprob.cpu()[:, has].double().sum(1)
            st["target_rank_hist"] += _histograms(stats.target_rank.cpu()[:, has], V)
        return self

    def merge(self, other: "LensAggregate") -> "LensAggregate":
        if other.sites != self.sites or other.vocab_size != self.vocab_size:
            raise ValueError("merge: the aggregates cover different sites or vocabularies")
        for name, t in other.state.items():
            self.state[name] += t
        return self

    def all_reduce(self) -> "LensAggregate":
        """Sum over all processes of the default torch.distributed group (in place)."""
        import torch.distributed as dist

        for t in self.state.values():
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return self

    def state_dict(self) -> dict:
        return {"sites": self.sites, "vocab_size": self.vocab_size, **{k: v.clone() for k, v in self.state.items()}}

    @classmethod
    def from_state_dict(cls, state: dict) -> "LensAggregate":
        agg = cls(state["sites"], state["vocab_size"])
        for name in agg.state:
            agg.state[name] = state[name].clone()
        return agg

    @property
    def tokens(self) -> int:
        return int(self.state["tokens"])

    @property
    def mean_prediction_depth(self) -> float:
        return float(self.state["depth_sum"]) / max(self.tokens, 1)

    def summary(self) -> list[dict]:
        """Per site: the means, shares and medians of `report.per_layer_summary`."""
        st, n, nt = self.state, max(self.tokens, 1), int(self.state["targets"])
        rows = []
        for i, site in enumerate(self.sites):
            row = {"site": site, "kl_to_final": float(st["kl"][i]) / n, "top1_agreement": float(st["top1_agree"][i]) / n,
                   "entropy": float(st["entropy"][i]) / n, "final_top1_rank_median": _hist_median(st["final_rank_hist"][i]),
                   "settled_fraction": float(st["settled"][i]) / n}
            if nt:
                row.update(next_token_accuracy=float(st["correct"][i]) / nt,
                           target_logprob=float(st["target_logprob"][i]) / nt,
                           target_rank_median=_hist_median(st["target_rank_hist"][i]))
            rows.append(row)
        return rows


def _histograms(ranks: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Per row of ranks [S, N] (values in [0, vocab)), the count of each value: [S, vocab]."""
    S = ranks.shape[0]
    flat = (ranks.long() + torch.arange(S)[:, None] * vocab_size).reshape(-1)
    return torch.bincount(flat, minlength=S * vocab_size).reshape(S, vocab_size)


def per_layer_summary(stats: LensStats, sites: list[str], targets: torch.Tensor | None = None) -> list[dict]:
    """Per site, over the tokens (target statistics over the tokens that have a target):

    kl_to_final, entropy, target_logprob: means; top1_agreement: share of tokens whose
    top-1 is the final top-1; next_token_accuracy: share whose top-1 is the target;
    final_top1_rank_median, target_rank_median: medians; settled_fraction: share of
    tokens whose prediction depth is at most this site (top-1 already final for good).
    The mean prediction depth is a per-token number: it equals Σ_sites (1 − settled_fraction).
    """
    ranks = [stats.final_top1_rank] + ([stats.target_rank] if stats.target_rank is not None else [])
    width = int(max(int(r.max()) for r in ranks)) + 1  # histograms need only cover the ranks seen
    return LensAggregate(sites, width).update(stats, targets).summary()
