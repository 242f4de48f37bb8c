"""`concepts(lm, lists=...)`: concept pairs → token ids → difference vectors of the unembedding (Δγ) and the
input embedding (Δg) → the cosine tables under the Euclidean and the causal inner product."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..core.models import LensModel
from . import lists as concept_lists
from .geometry import CausalInnerProduct, geometry_tables, tied
from .result import ConceptsResult
from .tokens import token_pairs


def embedding_matrix(lm: LensModel) -> torch.Tensor | None:
    """The input embedding's rows [vocab, d] where the model has one of the unembedding's shape."""
    w = getattr(lm.embed, "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or w.shape[1] != lm.d_model:
        return None
    return w.detach()


def _differences(matrix: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """matrix[y] − matrix[x] per pair, float64 on the CPU (gathered where the matrix lives)."""
    rows = ids.to(matrix.device)
    return (matrix[rows[:, 1]].double() - matrix[rows[:, 0]].double()).cpu()


def concept_geometry(lm: LensModel, lists=None, *, form: str = "auto", progress: bool = False) -> ConceptsResult:
    """Concept geometry of `lm`'s embedding and unembedding (Park et al. 2024). lists: None (every built-in list),
    built-in names, paths of JSON files, or a dict {concept: [[x, y], ...]}; form: "auto" (" word", else
    "word"), "space" or "bare". The unembedding's bias, if any, is no direction and is left out."""
    if not isinstance(lm, LensModel):
        raise ValueError(f"lm: expected a LensModel, got {type(lm).__name__}")
    resolved = concept_lists.resolve(lists)
    steps = tqdm(total=3, desc="concepts", disable=not progress)
    used, skipped = token_pairs(lm.tokenizer, resolved, form)
    steps.update()
    if not used:
        steps.close()
        raise ValueError(f"lists: no pair of {len(resolved)} concept(s) has two single-token words "
                         f"({len(skipped)} skipped)")
    names = list(resolved)
    gamma = lm.unembed.weight.detach()
    emb = embedding_matrix(lm)
    if emb is not None and emb.shape[0] < lm.vocab_size:
        emb = None  # a smaller input vocabulary cannot hold every unembedding id
    ids = torch.tensor([[p.x_id, p.y_id] for p in used], dtype=torch.long)
    d_gamma, d_g = _differences(gamma, ids), None if emb is None else _differences(emb, ids)
    groups = [torch.tensor([i for i, p in enumerate(used) if p.concept == c], dtype=torch.long) for c in names]
    metric = CausalInnerProduct.from_unembedding(gamma)
    steps.update()
    geometry = {"euclidean": geometry_tables(d_gamma, d_g, groups),
                "causal": geometry_tables(d_gamma, d_g, groups, metric)}
    steps.update()
    steps.close()
    directions = torch.stack([d_gamma[g].mean(0) if len(g) else torch.full((lm.d_model,), float("nan"),
                                                                           dtype=torch.float64) for g in groups])
    pairs = {c: [{"x": p.x, "y": p.y, "ids": [p.x_id, p.y_id], "form": p.form} for p in used if p.concept == c]
             for c in names}
    return ConceptsResult(concepts=names, pairs=pairs, skipped=skipped, geometry=geometry,
                          tied=tied(gamma, emb), inner_product=metric.note, ridge=metric.ridge,
                          has_embedding=emb is not None, directions=directions,
                          meta={"model": lm.describe(), "form": form})
