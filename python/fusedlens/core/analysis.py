"""The corpus pass and the small interface through which an analysis rides along it.

`fusedlens run` (job.corpus_job) runs one forward per batch, decodes every captured site with
the lens kernel once, and hands each analysis registered in job.analyses the same
`CorpusBatch`. An analysis keeps running sums only: the job saves them in its checkpoint
(`state_dict` / `load_state_dict`), adds them up over ranks (`all_reduce`) and writes them at
the end (`write`); `merge` adds another instance's sums (two halves of a corpus give the sums
of the whole). Options it adds to `fusedlens run` are the fields of its `Options` dataclass.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch

from .capture import ResidualCapture, Residuals
from .models import LensModel


@dataclass
class CorpusPass:
    """What the job shares with every analysis: the model, the residual capture and the lens call.

    decode(residuals, k, token_sets=None) → the LensStats of the rows, through the job's lens (a
    tuned lens's translators where it has one), backend and GEMM precision. rank: this process's
    rank under torch.distributed (0 alone)."""

    lm: LensModel
    capture: ResidualCapture
    decode: Callable
    rank: int = 0

    @property
    def sites(self) -> list[str]:
        return self.capture.sites


@dataclass
class CorpusBatch:
    """One forward's rows: the captured residuals, their lens statistics, the forward's attention mask
    [batch, seq] and each row's corpus sequence index [rows]."""

    residuals: Residuals
    stats: object  # ops.LensStats
    mask: torch.Tensor
    sequence: torch.Tensor


class CorpusAnalysis:
    """The interface (every method but `update` and the state has a do-nothing default).

    name: its key in the checkpoint and in throughput.json's seconds."""

    name = ""
    Options = None  # a kw_only dataclass of the fields it adds to the job's config, or None

    @classmethod
    def check(cls, cfg) -> None:
        """Checks of its options and files before the model loads (a bad file fails in a second)."""

    @classmethod
    def build(cls, cfg, corpus_pass: CorpusPass) -> "CorpusAnalysis | None":
        """The analysis for this config, or None where the config does not ask for it."""
        raise NotImplementedError

    def forward_context(self):
        """A context the forward runs inside (hooks of its own riding along the same forward)."""
        return contextlib.nullcontext()

    @property
    def token_sets(self) -> torch.Tensor | None:
        """Token sets whose probability mass the lens sweep should sum (ops.lens_stats token_sets)."""
        return None

    def update(self, batch: CorpusBatch) -> None:
        raise NotImplementedError

    def state_dict(self):
        raise NotImplementedError

    def load_state_dict(self, state) -> None:
        raise NotImplementedError

    def merge(self, other: "CorpusAnalysis") -> None:
        """Add other's sums into this one's (other unchanged)."""
        raise NotImplementedError

    def all_reduce(self) -> None:
        """Sum over the ranks of torch.distributed, in place on every rank."""
        raise NotImplementedError

    def on_checkpoint(self) -> None:
        """Called before each checkpoint is saved (files it writes as it goes are finished here)."""

    def summary(self, rows: list[dict]) -> dict:
        """Its columns of summary.json: per-site entries added to rows (one dict per site, in site order),
        and top-level fields returned."""
        return {}

    def write(self, out: str, summary: dict) -> None:
        """Its output files in folder out (rank 0, after the sums are complete); summary: summary.json's
        content (summary["lens"] is "logit" or "tuned")."""

    def views(self, summary: dict, vocab) -> list[dict]:
        """Its part of the run's report.html (report.page views; vocab: the page's report.page.Vocab), after
        `write`."""
        return []
