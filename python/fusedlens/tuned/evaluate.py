"""Held-out comparison of the logit lens and a tuned lens, site by site.

Per site: KL(p_final ‖ p_lens) and the cross-entropy of the next token, both in bits
per token, and top-1 agreement with the final layer, for the logit lens and the tuned
lens side by side. Both go through the fused `ops.lens_stats` (the tuned lens after
its translators), so nothing holds a [tokens × vocab] tensor.
"""
from __future__ import annotations

import math

import torch

from .. import ops
from ..core.capture import ResidualCapture
from ..core.models import LensModel
from ..data.windows import windows
from ..lens import LensAggregate
from ..report.page import Viewable
from ..report.tuned import tuned_eval_views
from .lens import TunedLens

LN2 = math.log(2)
LENSES = ("logit", "tuned")


class TunedEval(list, Viewable):
    """evaluate()'s rows, one dict per site (a plain list to every reader), with the run's facts in `meta`
    and `save_html(path)`: the per-site curves of both lenses on an interactive page."""

    html_title = "fusedlens: logit lens vs tuned lens"

    def __init__(self, rows=(), meta: dict | None = None):
        super().__init__(rows)
        self.meta = dict(meta or {})

    def views(self, vocab) -> list[dict]:
        return tuned_eval_views(self)


def evaluate(lm: LensModel, lens: TunedLens, ids: torch.Tensor, *, seq_len: int = 256, backend: str | None = None,
             progress: bool = False) -> TunedEval:
    """Mean per-site statistics over held-out ids (1-D), cut into sequences of seq_len tokens."""
    from tqdm.auto import tqdm

    if ids.dim() != 1 or ids.numel() < 2:
        raise ValueError(f"ids: expected a 1-D tensor of at least 2 token ids, got shape {tuple(ids.shape)}")
    lm.check_window(min(seq_len, ids.numel()))
    capture = ResidualCapture(lm, embed=True, mid=any(s.startswith("mid.") for s in lens.sites))
    if capture.sites[:-1] != lens.sites:
        raise ValueError(f"lens: its sites do not match the model's hidden states ({capture.sites[:3]}...)")
    aggs = {name: LensAggregate(capture.sites, lm.vocab_size) for name in LENSES}
    for seq in tqdm(windows(ids, seq_len), disable=not progress, desc="evaluating", unit="seq"):
        if seq.numel() < 2:
            continue
        res = capture.run(seq[None])
        aggs["logit"].update(ops.lens_stats(res.hidden, lm.norm, lm.unembed, res.targets, backend=backend), res.targets)
        aggs["tuned"].update(lens.lens_stats(res.hidden, res.targets, backend=backend), res.targets)
    summaries = {name: agg.summary() for name, agg in aggs.items()}
    rows = []
    for i, site in enumerate(capture.sites):
        row = {"site": site}
        for name in LENSES:
            r = summaries[name][i]
            row[f"kl_bits_{name}"] = r["kl_to_final"] / LN2
            row[f"ce_bits_{name}"] = -r["target_logprob"] / LN2
            row[f"top1_agreement_{name}"] = r["top1_agreement"]
        rows.append(row)
    return TunedEval(rows, {"held_out_tokens": int(ids.numel()), "seq_len": seq_len})
