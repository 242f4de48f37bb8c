"""The lens in the corpus pass: per-site sums of the lens statistics (LensAggregate) and the rows the
pictures show, kept from the same pass; summary.json's per-site rows, layers.png, grid.png and
prediction_depth.html."""
from __future__ import annotations

import os

import torch

from .. import report
from ..core.analysis import CorpusAnalysis, CorpusBatch, CorpusPass
from ..ops.stats import LensStats
from ..report.html import PASSAGE_TOKENS, write_depth_html
from .aggregate import LensAggregate
from .logit_lens import LensResult

GRID_TOKENS = 24


class PictureRows:
    """The rows the pictures show: the first PASSAGE_TOKENS tokens of the corpus' first sequence (or of
    --prompt), all sites, through the run's lens. Small, so they ride along in the checkpoint; no
    second model load, corpus read or forward."""

    FIELDS = ("input_ids", "targets", "position")

    def __init__(self, sites: list[str], kept: dict | None = None):
        self.sites, self.kept = list(sites), kept

    def _set(self, stats: LensStats, res, rows: torch.Tensor) -> None:
        rows = rows[:PASSAGE_TOKENS]
        self.kept = {"stats": {k: None if v is None else v.cpu() for k, v in stats.select(rows).items()},
                     **{name: getattr(res, name)[rows].cpu() for name in self.FIELDS}}

    def keep(self, stats: LensStats, res, sequence_of_row: torch.Tensor) -> None:
        """Keep the rows of corpus sequence 0 if this batch has them."""
        if self.kept is None and bool((sequence_of_row == 0).any()):
            self._set(stats, res, (sequence_of_row == 0).nonzero()[:, 0].to(stats.lse.device))

    def keep_prompt(self, corpus_pass: CorpusPass, prompt: str) -> None:
        """The user's prompt instead: one forward of it through the run's capture and lens."""
        lm = corpus_pass.lm
        ids = torch.tensor(lm.tokenizer(prompt)["input_ids"][:PASSAGE_TOKENS], dtype=torch.long)
        if ids.numel() < 2:
            raise ValueError(f"prompt: needs at least 2 tokens, got {ids.numel()}")
        res = corpus_pass.capture.run(ids[None])
        stats = corpus_pass.decode(res, 1)
        self._set(stats, res, torch.arange(ids.numel(), device=stats.lse.device))

    def result(self) -> LensResult | None:
        if self.kept is None:
            return None
        n = self.kept["input_ids"].numel()
        return LensResult(sites=self.sites, stats=LensStats(**self.kept["stats"]),
                          batch_index=torch.zeros(n, dtype=torch.long), **{k: self.kept[k] for k in self.FIELDS})


class CorpusLens(CorpusAnalysis):
    name = "lens"

    def __init__(self, corpus_pass: CorpusPass, prompt: str | None):
        self.corpus_pass, self.prompt, self.shown = corpus_pass, prompt, None
        self.aggregate = LensAggregate(corpus_pass.sites, corpus_pass.lm.vocab_size)
        self.pictures = PictureRows(corpus_pass.sites)

    @classmethod
    def build(cls, cfg, corpus_pass: CorpusPass) -> "CorpusLens":
        return cls(corpus_pass, cfg.prompt)

    def update(self, batch: CorpusBatch) -> None:
        self.aggregate.update(batch.stats, batch.residuals.targets)
        self.pictures.keep(batch.stats, batch.residuals, batch.sequence)

    def state_dict(self) -> dict:
        return {"aggregate": self.aggregate.state_dict(), "pictures": self.pictures.kept}

    def load_state_dict(self, state: dict) -> None:
        self.aggregate = LensAggregate.from_state_dict(state["aggregate"])
        self.pictures.kept = state["pictures"]

    def merge(self, other: "CorpusLens") -> None:
        self.aggregate.merge(other.aggregate)
        if self.pictures.kept is None:
            self.pictures.kept = other.pictures.kept

    def all_reduce(self) -> None:
        self.aggregate.all_reduce()

    def summary(self, rows: list[dict]) -> dict:
        for row, site in zip(rows, self.aggregate.summary()):
            row.update(site)
        return {"tokens": self.aggregate.tokens, "mean_prediction_depth": self.aggregate.mean_prediction_depth}

    def write(self, out: str, summary: dict) -> None:
        lm, lens = self.corpus_pass.lm, summary["lens"]
        title = f"{lens} lens, {lm.describe()['model']}, {self.aggregate.tokens} tokens"
        report.plot_layer_curves(summary["layers"], os.path.join(out, "layers.png"), title=title)
        if self.prompt:  # the grid of a prompt of the user's: its own forward, same capture and lens
            self.pictures.keep_prompt(self.corpus_pass, self.prompt)
        shown = self.shown = self.pictures.result()
        if shown is not None:
            report.plot_lens_grid(shown, lm.tokenizer, os.path.join(out, "grid.png"), seq=0, max_positions=GRID_TOKENS,
                                  title=f"{lens} lens, the prompt: top-1 token per site (bold = true next token)")
            write_depth_html(shown, lm.tokenizer, os.path.join(out, "prediction_depth.html"), PASSAGE_TOKENS)

    def views(self, summary: dict, vocab) -> list[dict]:
        lens = f"{summary['lens']} lens"
        out = [report.layer_curves_view(summary["layers"], f"{lens}, per site over all {summary['tokens']} tokens")]
        if self.shown is not None:
            what = "the prompt" if self.prompt else "the first tokens of the corpus"
            self.shown.lens = lens
            out.append(dict(report.lens_view({lens: self.shown}, vocab), title=f"{lens}, {what}: tokens × sites"))
            depth = self.shown.stats.prediction_depth
            out.append({"type": "tokens", "title": "prediction depth: the first site from which the top-1 stays the "
                        "final top-1", "tokens": [vocab.text(i) for i in vocab.use(self.shown.input_ids)],
                        "series": [{"name": "prediction depth (site index)", "values": report.array(depth),
                                    "scale": "linear", "vmin": 0, "vmax": len(self.shown.sites) - 1}]})
        return out
