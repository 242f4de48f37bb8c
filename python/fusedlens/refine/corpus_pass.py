"""Guess-then-refine in the corpus pass: the corpus' next-token counts (`--token-counts`,
token_counts.json) and the lens's per-bucket sums (`--refine COUNTS.json`, refine.json), from the same
pass and the same sweep as the lens (the buckets are token sets of ops.lens_stats), checkpointed and
all-reduced like every other sum (refine.frequency, refine.aggregate)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..core.analysis import CorpusAnalysis, CorpusBatch, CorpusPass
from ..core.fields import option
from ..core.files import write_json
from .aggregate import RefineSums
from .frequency import TokenCounts, bucket_names, check_buckets, parse_buckets


@dataclass(kw_only=True)
class TokenCountOptions:
    token_counts: bool = option(False, "count each next token of the corpus (token_counts.json, for --refine)")


class CorpusTokenCounts(CorpusAnalysis):
    name = "token_counts"
    Options = TokenCountOptions

    def __init__(self, vocab_size: int):
        self.counts = TokenCounts(vocab_size)

    @classmethod
    def build(cls, cfg, corpus_pass: CorpusPass) -> "CorpusTokenCounts | None":
        return cls(corpus_pass.lm.vocab_size) if cfg.token_counts else None

    def update(self, batch: CorpusBatch) -> None:
        self.counts.update(batch.residuals.targets)

    def state_dict(self) -> dict:
        return self.counts.state()

    def load_state_dict(self, state: dict) -> None:
        self.counts = TokenCounts.from_state(state)

    def merge(self, other: "CorpusTokenCounts") -> None:
        self.counts.merge(other.counts)

    def all_reduce(self) -> None:
        self.counts.all_reduce()

    def write(self, out: str, summary: dict) -> None:
        self.counts.save(os.path.join(out, "token_counts.json"))


@dataclass(kw_only=True)
class RefineOptions:
    refine: str | None = option(None, "guess-then-refine sums of the lens by token-frequency bucket (refine.json), "
                                      "the buckets ranked by a token_counts.json")
    buckets: str = option("10,100,1000", "upper frequency ranks of the --refine buckets but the last")


class CorpusRefine(CorpusAnalysis):
    name = "refine"
    Options = RefineOptions

    def __init__(self, vocab_size: int, sites: list[str], counts_path: str, buckets: str):
        bounds = check_buckets(parse_buckets(buckets), vocab_size)
        self.sites, self.names = list(sites), bucket_names(bounds)
        buckets_of = TokenCounts.load(counts_path, vocab_size, name="refine").buckets(bounds)
        self.sums = RefineSums(len(sites), buckets_of, len(self.names))

    @classmethod
    def check(cls, cfg) -> None:
        if cfg.refine:
            TokenCounts.load(cfg.refine, name="refine")
            parse_buckets(cfg.buckets)

    @classmethod
    def build(cls, cfg, corpus_pass: CorpusPass) -> "CorpusRefine | None":
        if not cfg.refine:
            return None
        return cls(corpus_pass.lm.vocab_size, corpus_pass.sites, cfg.refine, cfg.buckets)

    @property
    def token_sets(self) -> torch.Tensor:
        return self.sums.token_sets()

    def update(self, batch: CorpusBatch) -> None:
        self.sums.update(batch.stats, batch.residuals.targets)

    def state_dict(self) -> dict:
        return self.sums.state()

    def load_state_dict(self, state: dict) -> None:
        self.sums.load_state(state)

    def merge(self, other: "CorpusRefine") -> None:
        self.sums.merge(other.sums)

    def all_reduce(self) -> None:
        self.sums.all_reduce()

    def write(self, out: str, summary: dict) -> None:
        write_json({"sites": self.sites, "buckets": self.names,
                    "lenses": {summary["lens"]: self.sums.summary(self.sites, self.names)}},
                   os.path.join(out, "refine.json"))
