"""What `concept_geometry()` returns: the pairs it used and skipped, and the cosine tables under the Euclidean and
the causal inner product, loadable from its JSON."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import torch

from ..report.concepts import concepts_views
from ..report.page import Viewable
from .geometry import Geometry

FORMAT = "fusedlens.ConceptsResult/1"
KINDS = ("euclidean", "causal")


def _nan_to_none(t: torch.Tensor):
    if t.dim() == 0:
        v = float(t)
        return None if math.isnan(v) else v
    return [_nan_to_none(r) for r in t]


def _none_to_nan(x) -> torch.Tensor:
    def walk(v):
        return [walk(e) for e in v] if isinstance(v, list) else (math.nan if v is None else float(v))

    return torch.tensor(walk(x), dtype=torch.float64)


@dataclass
class ConceptsResult(Viewable):
    """concepts: names in table order; pairs: per concept the used pairs ({x, y, ids, form}); skipped: the
    pairs left out and why; geometry: {"euclidean", "causal"} → Geometry; tied: how the embedding equals the
    unembedding ("same storage", "equal values") or None; directions: [concepts, d] the mean Δγ per
    concept (not in the JSON; `torch.save` it). `save_html(path)`: the cosine grids on an interactive page."""

    concepts: list[str]
    pairs: dict
    skipped: list[dict]
    geometry: dict
    tied: str | None
    inner_product: str
    ridge: float
    has_embedding: bool = True
    directions: torch.Tensor | None = None
    meta: dict = field(default_factory=dict)

    html_title = "fusedlens: concept geometry"

    def views(self, vocab) -> list[dict]:
        return concepts_views(self)

    @property
    def alignment_note(self) -> str:
        if not self.has_embedding:
            return "no input embedding: alignment not computed"
        if self.tied:
            return f"tied embeddings ({self.tied}): Δg = Δγ, so cos(Δγ, Δg) = 1 trivially under any inner product"
        return "untied embeddings: cos(Δγ, Δg) of each pair's own embedding and unembedding differences"

    def n_pairs(self) -> dict:
        return {c: len(self.pairs[c]) for c in self.concepts}

    def summary(self) -> dict:
        """Headline numbers per inner product: mean within-concept consistency (over concepts with ≥ 2 pairs),
        mean between-concept pair cosine, mean |cosine| between concept directions, mean alignment."""
        out = {}
        for kind in KINDS:
            g: Geometry = self.geometry[kind]
            w = g.within[~g.within.isnan()]
            a = g.alignment_pairs[~g.alignment_pairs.isnan()]
            out[kind] = {"within_mean": float(w.mean()) if w.numel() else math.nan,
                         "between_mean": g.between_mean(),
                         "between_directions_abs_mean": g.between_directions_abs_mean(),
                         "alignment_mean": float(a.mean()) if a.numel() else math.nan}
        return out

    def to_json(self) -> dict:
        def clean(d):
            return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}

        few = [c for c in self.concepts if len(self.pairs[c]) < 2]
        return {"format": FORMAT, **self.meta, "concepts": self.concepts, "n_pairs": self.n_pairs(),
                "n_skipped": len(self.skipped), "tied": self.tied, "alignment_note": self.alignment_note,
                "inner_product": self.inner_product, "ridge": self.ridge, "has_embedding": self.has_embedding,
                "too_few_pairs": (f"{', '.join(few)}: fewer than 2 usable pairs, within-concept consistency "
                                  "undefined (null)") if few else None,
                "summary": {k: clean(v) for k, v in self.summary().items()},
                "geometry": {k: {"pairs": _nan_to_none(g.pairs), "directions": _nan_to_none(g.directions),
                                 "alignment": _nan_to_none(g.alignment),
                                 "alignment_pairs": _nan_to_none(g.alignment_pairs)}
                             for k, g in self.geometry.items()},
                "pairs": self.pairs, "skipped": self.skipped}

    def save_json(self, path: str) -> None:
        from ..core.files import write_json

        write_json(self.to_json(), path)

    @classmethod
    def load_json(cls, path: str) -> "ConceptsResult":
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
        if d.get("format") != FORMAT:
            raise ValueError(f"path: {path} is not a {FORMAT} file")
        geometry = {k: Geometry(**{n: _none_to_nan(v[n]) for n in ("pairs", "directions", "alignment",
                                                                    "alignment_pairs")})
                    for k, v in d["geometry"].items()}
        meta = {k: d[k] for k in ("model", "form") if k in d}
        return cls(concepts=d["concepts"], pairs=d["pairs"], skipped=d["skipped"], geometry=geometry,
                   tied=d["tied"], inner_product=d["inner_product"], ridge=d["ridge"],
                   has_embedding=d["has_embedding"], meta=meta)
