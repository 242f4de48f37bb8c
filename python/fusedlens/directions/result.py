"""DirectionsResult: the vectors of every site, the class means, the facts behind them and the held-out
scores; `.save(dir)` writes directions.pt (the contract other commands read: FORMAT) and
directions.json; `.scan(lm, text)` is the LAT-style scan of a text; `.save_html(path)` the interactive page."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch

from ..core.capture import ResidualCapture
from ..core.files import load_torch
from ..data.windows import tokenize
from ..report.directions import directions_views
from ..report.page import Viewable
from .solve import KINDS, accuracy, auroc

FORMAT = "fusedlens.directions/1"


@dataclass
class DirectionsResult(Viewable):
    """tokenizer: the model's (token strings on the page; not saved); scans: the outputs of `scan()` so far,
    drawn on the page after the per-site curves."""

    model: str
    sites: list[str]
    vectors: dict[str, torch.Tensor]  # kind -> [S, d] float32, unit rows
    mean_pos: torch.Tensor  # [S, d] float64
    mean_neg: torch.Tensor  # [S, d] float64
    lda_ridge: float
    position: str
    facts: list[dict]  # per site: counts, norms, rank, ...
    meta: dict = field(default_factory=dict)
    heldout: list[dict] = field(default_factory=list)  # per site: {kind: {accuracy, auroc}}, counts
    heldout_scores: torch.Tensor | None = None  # [S, kinds, rows] float64, rows in held-out pair order
    heldout_labels: torch.Tensor | None = None  # [rows] bool (True: positive)
    tokenizer: object = field(default=None, repr=False, compare=False)
    scans: list = field(default_factory=list, repr=False, compare=False)

    html_title = "fusedlens: reading vectors"

    def views(self, vocab) -> list[dict]:
        return directions_views(self.to_dict(), self.scans, vocab)

    def stacked(self) -> torch.Tensor:
        """[S, kinds, d] float32 in KINDS order."""
        return torch.stack([self.vectors[k] for k in KINDS], 1)

    def midpoints(self) -> torch.Tensor:
        """[S, kinds] float64: each vector's projection of the midpoint of the two training class means."""
        mid = (self.mean_pos + self.mean_neg) / 2
        return torch.einsum("skd,sd->sk", self.stacked().double(), mid)

    def half_gaps(self) -> torch.Tensor:
        """[S, kinds] float64: v·(μ+ − μ−)/2, the projection distance from the midpoint to the positive mean."""
        return torch.einsum("skd,sd->sk", self.stacked().double(), self.mean_pos - self.mean_neg) / 2

    def evaluate(self, scores: torch.Tensor | None, labels: torch.Tensor | None) -> None:
        """scores [S, kinds, rows] (projection − midpoint), labels [rows] → self.heldout."""
        self.heldout_scores = scores
        self.heldout_labels = labels.bool() if labels is not None else None
        self.heldout = []
        for s in range(len(self.sites)):
            row = {"n_heldout_pos": int(labels.sum()) if labels is not None else 0,
                   "n_heldout_neg": int((labels == 0).sum()) if labels is not None else 0}
            for k, kind in enumerate(KINDS):
                row[kind] = {"accuracy": accuracy(scores[s, k], labels) if scores is not None else None,
                             "auroc": auroc(scores[s, k], labels) if scores is not None else None}
            self.heldout.append(row)

    def best(self, kind: str = "mean_diff", metric: str = "accuracy") -> tuple[str, float] | None:
        vals = [(h[kind][metric], -i, site) for i, (site, h) in enumerate(zip(self.sites, self.heldout))
                if h and h[kind][metric] is not None]
        if not vals:
            return None
        v, _, site = max(vals)
        return site, v

    def to_dict(self) -> dict:
        cos = self.stacked().double()
        cos = torch.einsum("skd,sjd->skj", cos, cos)
        rows = []
        for i, site in enumerate(self.sites):
            rows.append({"site": site, **self.facts[i], **(self.heldout[i] if self.heldout else {}),
                         "cosines": {f"{KINDS[a]}.{KINDS[b]}": float(cos[i, a, b])
                                     for a in range(len(KINDS)) for b in range(a + 1, len(KINDS))}})
        best = {k: self.best(k) for k in KINDS} if self.heldout else {}
        return {"format": FORMAT, "model": self.model, "position": self.position, "lda_ridge": self.lda_ridge,
                "kinds": list(KINDS), **self.meta,
                "best_heldout_accuracy": {k: {"site": b[0], "accuracy": b[1]} if b else None for k, b in best.items()},
                "sites": rows}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def tensors(self) -> dict:
        """The directions.pt contract (FORMAT)."""
        return {"format": FORMAT, "model": self.model, "sites": list(self.sites),
                "vectors": {k: self.vectors[k].float().cpu().contiguous() for k in KINDS},
                "mean_pos": self.mean_pos.double().cpu(), "mean_neg": self.mean_neg.double().cpu(),
                "lda_ridge": float(self.lda_ridge), "position": self.position}

    def save(self, out_dir: str) -> tuple[str, str]:
        os.makedirs(out_dir, exist_ok=True)
        pt, js = os.path.join(out_dir, "directions.pt"), os.path.join(out_dir, "directions.json")
        torch.save(self.tensors(), pt)
        with open(js, "w") as f:
            f.write(self.to_json())
        return pt, js

    @classmethod
    def load(cls, path: str) -> "DirectionsResult":
        """From a directions.pt (the vectors and means; facts and scores are in the JSON beside it)."""
        obj = load_torch("path", path)
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise ValueError(f"path: {path} is not a {FORMAT} file")
        return cls(obj["model"], obj["sites"], obj["vectors"], obj["mean_pos"], obj["mean_neg"], obj["lda_ridge"],
                   obj["position"], [{} for _ in obj["sites"]])

    @torch.no_grad()
    def scan(self, lm, text: str, kind: str = "mean_diff") -> dict:
        """LAT-style scan: every token of `text` at every site, its projection onto `kind`'s vector minus the
        training midpoint ("raw" [S, T]) and that in units of the half gap ("values": +1 at the positive
        class mean, −1 at the negative one, 0 at the midpoint). Each scan is kept in `scans` for the page."""
        if kind not in KINDS:
            raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
        if not isinstance(text, str) or not text.strip():
            raise ValueError("text: expected a non-empty text to scan")
        if lm.d_model != self.mean_pos.shape[1]:
            raise ValueError(f"lm: d_model {lm.d_model} does not match the directions' {self.mean_pos.shape[1]}")
        layers = [int(s.split(".")[1]) for s in self.sites if s.startswith("resid.")]
        capture = ResidualCapture(lm, layers=layers, embed="embed" in self.sites)
        if capture.sites != self.sites:
            raise ValueError(f"sites: the directions' sites {self.sites} are not capture's {capture.sites}")
        ids = tokenize(lm.tokenizer, text)
        res = capture.run(ids[None])
        k = KINDS.index(kind)
        v = self.vectors[kind].double().to(res.hidden.device)
        raw = torch.einsum("sd,std->st", v, res.hidden.double()).cpu() - self.midpoints()[:, k, None]
        gap = self.half_gaps()[:, k]
        scale = torch.where(gap > 0, gap, torch.ones_like(gap))
        out = {"kind": kind, "sites": list(self.sites), "ids": ids, "raw": raw, "values": raw / scale[:, None]}
        self.scans.append(out)  # kept for the page (save_html)
        if self.tokenizer is None:
            self.tokenizer = lm.tokenizer
        return out
