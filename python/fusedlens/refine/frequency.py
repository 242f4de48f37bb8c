"""Unigram counts of a corpus' next tokens, their frequency ranks and rank buckets (Gupta et al. 2025).

Counts are additive int64 sums over the target tokens a pass sees (merge, state and
all-reduce like every other sum); rank 1 is the most frequent token, ties and unseen
tokens broken by ascending id, so the ranking is a total order. Buckets are rank
ranges: the default 1–10, 11–100, 101–1,000, 1,001+.
"""
from __future__ import annotations

import json

import torch

from ..core.checks import IGNORE_INDEX

DEFAULT_BUCKETS = (10, 100, 1000)  # upper ranks of every bucket but the last


def check_buckets(bounds, vocab_size: int) -> list[int]:
    """Increasing upper ranks ≥ 1 below the vocabulary size; the last bucket is everything after them."""
    try:
        b = [int(x) for x in bounds]
    except (TypeError, ValueError):
        raise ValueError(f"buckets: expected increasing integer ranks, got {bounds!r}") from None
    if not b or any(x < 1 for x in b) or any(y <= x for x, y in zip(b, b[1:])) or b[-1] >= vocab_size:
        raise ValueError(f"buckets: expected increasing ranks in [1, {vocab_size}), got {list(bounds)!r}")
    return b


def parse_buckets(spec: str) -> list[int]:
    """'10,100,1000' → [10, 100, 1000]."""
    try:
        return [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"buckets: expected comma-separated ranks such as 10,100,1000, got {spec!r}") from None


def bucket_names(bounds: list[int]) -> list[str]:
    lows = [1] + [b + 1 for b in bounds]
    return [f"{lo:,}-{hi:,}" for lo, hi in zip(lows, bounds)] + [f"{lows[-1]:,}+"]


class TokenCounts:
    """How often each token id is the next token of a corpus."""

    def __init__(self, vocab_size: int):
        if not isinstance(vocab_size, int) or vocab_size < 2:
            raise ValueError(f"vocab_size: expected an int >= 2, got {vocab_size!r}")
        self.counts = torch.zeros(vocab_size, dtype=torch.int64)

    @property
    def vocab_size(self) -> int:
        return self.counts.numel()

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def update(self, targets: torch.Tensor) -> "TokenCounts":
        """Add a batch's target ids (IGNORE_INDEX / negatives are skipped; others must be < vocab)."""
        t = targets.reshape(-1).long().cpu()
        t = t[t >= 0]
        if t.numel() and int(t.max()) >= self.vocab_size:
            raise ValueError(f"targets: ids must be < vocab ({self.vocab_size}), got {int(t.max())}")
        self.counts += torch.bincount(t, minlength=self.vocab_size)
        return self

    def merge(self, other: "TokenCounts") -> "TokenCounts":
        if other.vocab_size != self.vocab_size:
            raise ValueError(f"other: vocab {other.vocab_size} does not match {self.vocab_size}")
        self.counts += other.counts
        return self

    def all_reduce(self, group=None) -> "TokenCounts":
        import torch.distributed as dist

        dist.all_reduce(self.counts, group=group)
        return self

    def state(self) -> dict:
        return {"counts": self.counts.clone()}

    @classmethod
    def from_state(cls, state: dict) -> "TokenCounts":
        c = cls(int(state["counts"].numel()))
        c.counts = state["counts"].long().clone()
        return c

    def ranks(self) -> torch.Tensor:
        """Rank of every id [vocab], 1 = most frequent; equal counts (and unseen ids) by ascending id."""
        order = torch.argsort(-self.counts, stable=True)  # stable: ties keep ascending id
        ranks = torch.empty_like(order)
        ranks[order] = torch.arange(1, self.vocab_size + 1)
        return ranks

    def buckets(self, bounds=DEFAULT_BUCKETS) -> torch.Tensor:
        """Bucket index of every id [vocab] (0 = the most frequent ranks)."""
        bounds = check_buckets(bounds, self.vocab_size)
        return torch.bucketize(self.ranks(), torch.tensor(bounds), right=False)

    def save(self, path: str) -> None:
        """JSON: {"vocab_size", "total", "counts": {id: count} for the ids seen}."""
        seen = self.counts.nonzero()[:, 0]
        with open(path, "w") as f:
            json.dump({"vocab_size": self.vocab_size, "total": self.total,
                       "counts": {str(int(i)): int(self.counts[i]) for i in seen}}, f)

    @classmethod
    def load(cls, path: str, vocab_size: int | None = None, *, name: str = "counts") -> "TokenCounts":
        """A counts JSON as `save` writes it; every defect is a ValueError naming `name` and the file."""
        from ..core.files import read_json

        what = '{"vocab_size": n, "counts": {"id": count, ...}}'
        obj = read_json(name, path, dict, f"token counts {what}")
        n, entries = obj.get("vocab_size"), obj.get("counts")
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 2 ** 24 or not isinstance(entries, dict):
            raise ValueError(f"{name}: {path} is not a token-counts file: expected {what}")
        if vocab_size is not None and n != vocab_size:
            raise ValueError(f"{name}: {path} counts a vocabulary of {n}, the model has {vocab_size}")
        c = cls(n)
        for k, v in entries.items():
            if not (k.isascii() and k.isdigit() and int(k) < n) or isinstance(v, bool) or not isinstance(v, int) \
                    or not 0 <= v < 2 ** 63:
                raise ValueError(f"{name}: {path}: bad entry {k!r}: {v!r} (expected a token id in [0, {n}) and a "
                                 "count >= 0)")
            c.counts[int(k)] = v
        return c


def targets_of(res) -> torch.Tensor:
    """The next-token ids of a capture batch that have one."""
    return res.targets[res.targets != IGNORE_INDEX]
