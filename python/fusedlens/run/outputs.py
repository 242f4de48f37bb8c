"""What `fusedlens run` leaves behind: summary.json, throughput.json and the pictures."""
from __future__ import annotations

import os

import torch

from .. import ops, report
from ..lens.logit_lens import LensResult
from ..ops.stats import LensStats
from ..report.html import PASSAGE_TOKENS, write_depth_html

GRID_TOKENS = 24


class PictureRows:
    """The rows the pictures show, kept from the main pass: the first PASSAGE_TOKENS tokens of
    the corpus' first sequence (or of --prompt), all sites, through the run's lens. Small, so
    they ride along in the checkpoint; no second model load, corpus read or forward."""

    FIELDS = ("input_ids", "targets", "position")

    def __init__(self, sites: list[str], kept: dict | None = None):
        self.sites, self.kept = list(sites), kept

    @classmethod
    def from_state(cls, state: dict | None, sites: list[str]) -> "PictureRows":
        return cls(sites, state)

    def state(self) -> dict | None:
        return self.kept

    def _set(self, stats: LensStats, res, rows: torch.Tensor) -> None:
        rows = rows[:PASSAGE_TOKENS]
        self.kept = {"stats": {k: None if v is None else v.cpu() for k, v in stats.select(rows).items()},
                     **{name: getattr(res, name)[rows].cpu() for name in self.FIELDS}}

    def keep(self, stats: LensStats, res, sequence_of_row: torch.Tensor) -> None:
        """Keep the rows of corpus sequence 0 if this batch has them."""
        if self.kept is None and bool((sequence_of_row == 0).any()):
            self._set(stats, res, (sequence_of_row == 0).nonzero()[:, 0].to(stats.lse.device))

    def keep_prompt(self, lm, capture, translate, cfg) -> None:
        """The user's prompt instead: one forward of it through the run's capture and lens."""
        ids = torch.tensor(lm.tokenizer(cfg.prompt)["input_ids"][:PASSAGE_TOKENS], dtype=torch.long)
        if ids.numel() < 2:
            raise ValueError(f"prompt: needs at least 2 tokens, got {ids.numel()}")
        res = capture.run(ids[None])
        hidden = translate(res.hidden) if translate is not None else res.hidden
        stats = ops.lens_stats(hidden, lm.norm, lm.unembed, res.targets.to(hidden.device), 1, backend=cfg.backend,
                               compute=cfg.compute)
        self._set(stats, res, torch.arange(ids.numel(), device=stats.lse.device))

    def result(self) -> LensResult | None:
        if self.kept is None:
            return None
        n = self.kept["input_ids"].numel()
        return LensResult(sites=self.sites, stats=LensStats(**self.kept["stats"]),
                          batch_index=torch.zeros(n, dtype=torch.long), **{k: self.kept[k] for k in self.FIELDS})


def finish(cfg, lm, agg, probes, pictures: PictureRows, timers, tokens, rank, world, wall_seconds, refine=None,
           dla=None) -> dict:
    """All-reduce the sums over ranks; rank 0 writes the outputs. Returns the summary."""
    seconds = dict(timers.seconds)
    if world > 1:
        import torch.distributed as dist

        agg.all_reduce()
        if probes is not None:
            probes.all_reduce()
        if refine is not None:
            refine.all_reduce()
        if dla is not None:
            dla.all_reduce()
        sec = torch.tensor([seconds[k] for k in seconds], dtype=torch.float64)
        dist.all_reduce(sec, op=dist.ReduceOp.MAX)  # the ranks run side by side: the slowest sets the pace
        seconds = dict(zip(seconds, sec.tolist()))
    rows = agg.summary()
    if probes is not None:
        for row, r2 in zip(rows, probes.summary_by_site()):
            row.update(r2)
    summary = {"model": lm.describe(), "corpus": cfg.corpus, "tokens": agg.tokens, "seq_len": cfg.seq_len,
               "sites": agg.sites, "processes": world, "mean_prediction_depth": agg.mean_prediction_depth,
               "lens": "tuned" if cfg.tuned else "logit", "layers": rows}
    if rank == 0:
        os.makedirs(cfg.out, exist_ok=True)
        report.write_json(summary, os.path.join(cfg.out, "summary.json"))
        if refine is not None:
            refine.write(cfg.out, "tuned" if cfg.tuned else "logit")
        if dla is not None:
            dla.write(cfg.out)
        busy = sum(seconds.values())
        report.write_json({"tokens": agg.tokens, "seconds": seconds, "busy_seconds": busy,
                           "tokens_per_second": agg.tokens / busy if busy else None,
                           "share": {k: v / busy for k, v in seconds.items()} if busy else None,
                           "wall_seconds_this_process": wall_seconds, "processes": world},
                          os.path.join(cfg.out, "throughput.json"))
        title = f"{'tuned' if cfg.tuned else 'logit'} lens, {lm.describe()['model']}, {agg.tokens} tokens"
        report.plot_layer_curves(rows, os.path.join(cfg.out, "layers.png"), title=title)
        shown = pictures.result()
        if shown is not None:
            name = "tuned" if cfg.tuned else "logit"
            report.plot_lens_grid(shown, lm.tokenizer, os.path.join(cfg.out, "grid.png"), seq=0,
                                  max_positions=GRID_TOKENS,
                                  title=f"{name} lens, the prompt: top-1 token per site (bold = true next token)")
            write_depth_html(shown, lm.tokenizer, os.path.join(cfg.out, "prediction_depth.html"), PASSAGE_TOKENS)
    return summary
