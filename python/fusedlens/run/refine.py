"""Guess-then-refine inside `fusedlens run`: the corpus' token counts (--token-counts) and the lens's
per-bucket sums (--refine COUNTS.json), from the same pass and the same sweep as the lens, checkpointed
and all-reduced like every other sum (refine.frequency, refine.aggregate)."""
from __future__ import annotations

import os

import torch

from ..refine import RefineSums, TokenCounts, bucket_names, check_buckets, parse_buckets


class CorpusRefine:
    def __init__(self, lm, sites: list[str], count_tokens: bool, counts_path: str | None, buckets: str):
        self.sites = list(sites)
        self.counts = TokenCounts(lm.vocab_size) if count_tokens else None
        self.sums = None
        if counts_path:
            bounds = check_buckets(parse_buckets(buckets), lm.vocab_size)
            self.names = bucket_names(bounds)
            buckets_of = TokenCounts.load(counts_path, lm.vocab_size, name="refine").buckets(bounds)
            self.sums = RefineSums(len(sites), buckets_of, len(self.names))

    @property
    def token_sets(self) -> torch.Tensor | None:
        return None if self.sums is None else self.sums.token_sets()

    def update(self, stats, targets: torch.Tensor) -> None:
        if self.counts is not None:
            self.counts.update(targets)
        if self.sums is not None:
            self.sums.update(stats, targets)

    def state_dict(self) -> dict:
        return {"counts": None if self.counts is None else self.counts.state(),
                "sums": None if self.sums is None else self.sums.state()}

    def load_state_dict(self, state: dict) -> None:
        if self.counts is not None and state.get("counts") is not None:
            self.counts = TokenCounts.from_state(state["counts"])
        if self.sums is not None and state.get("sums") is not None:
            self.sums.load_state(state["sums"])

    def all_reduce(self) -> None:
        if self.counts is not None:
            self.counts.all_reduce()
        if self.sums is not None:
            self.sums.all_reduce()

    def write(self, out: str, lens: str) -> None:
        from ..report.common import write_json

        if self.counts is not None:
            self.counts.save(os.path.join(out, "token_counts.json"))
        if self.sums is not None:
            write_json({"sites": self.sites, "buckets": self.names,
                        "lenses": {lens: self.sums.summary(self.sites, self.names)}}, os.path.join(out, "refine.json"))
