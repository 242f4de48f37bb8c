"""Steering vectors: from a `fusedlens directions` file, a plain tensor file, or ActAdd prompts; and the
one write edit that adds c · v to a residual site.

A vector is a float64 tensor, [d] (one direction) or [n_front, d] (ActAdd: one row per front
position, added to the first n_front positions of the steered prompt). Steering sites are residual
sites: `embed`, `resid.i`, `mid.i` (those capture can also read back).
"""
from __future__ import annotations

import math
import os

import torch

from ..core.capture import ResidualCapture
from ..core.checks import check_tensor
from ..core.models import LensModel
from ..intervene import Edit, parse_site

DIRECTIONS_FORMAT = "fusedlens.directions/1"
KINDS = ("mean_diff", "pca", "lda")
PAD = " "  # ActAdd pads the shorter prompt with space tokens (Turner et al. 2023)


def check_site(lm: LensModel, site: str, name: str = "site") -> str:
    """A residual site of this model (embed, resid.i, mid.i), else a one-line error naming `name`."""
    try:
        kind, _, _ = parse_site(site, lm)
    except ValueError as err:
        raise ValueError(f"{name}: {str(err).split(': ', 1)[1]}") from None
    if kind not in ("embed", "resid", "mid"):
        raise ValueError(f"{name}: {site!r}: steering writes residual sites only (embed, resid.i, mid.i)")
    return site


def check_vector(lm: LensModel, vector, name: str = "vector") -> torch.Tensor:
    """A finite floating [d] or [n_front, d] tensor of the model's width, as float64."""
    if not isinstance(vector, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(vector).__name__}")
    check_tensor(name, vector, ndim=(1, 2), floating=True)
    if vector.shape[-1] != lm.d_model:
        raise ValueError(f"{name}: width {vector.shape[-1]} does not match the model's d_model {lm.d_model}")
    return vector.detach().to("cpu", torch.float64)


def check_coef(coef, name: str = "coef") -> float:
    if isinstance(coef, bool) or not isinstance(coef, (int, float)) or not math.isfinite(coef):
        raise ValueError(f"{name}: expected a finite number, got {coef!r}")
    return float(coef)


def model_dtype(lm: LensModel) -> torch.dtype:
    return next(lm.model.parameters()).dtype


def steer_edit(lm: LensModel, vector: torch.Tensor, site: str, coef: float, *, rows=None, positions=None) -> Edit:
    """The write edit adding coef · vector at `site`: c · v is formed in float64 and rounded once to the
    model's dtype, then added to the state (so c = 0 adds an exact zero). A [n_front, d] vector goes to
    positions 0 … n_front − 1; a [d] vector to `positions` (None: every position, generated ones too)."""
    v = check_vector(lm, vector)
    check_site(lm, site)
    value = (check_coef(coef) * v).to(model_dtype(lm))
    if v.dim() == 2:
        if positions is not None:
            raise ValueError("positions: an ActAdd vector [n_front, d] is added at the front positions; "
                             "positions must be None")
        positions = list(range(v.shape[0]))
    elif positions is not None:
        positions = [int(p) for p in positions]
        if not positions or min(positions) < 0:
            raise ValueError(f"positions: expected non-negative positions, got {positions}")
    return Edit(site, "add", value, rows=rows, positions=positions)


def unit(vector: torch.Tensor) -> torch.Tensor:
    """The read direction of a vector, float64 unit [d]: the vector itself, or for an ActAdd block the
    row of its last front position (the whole steering prompt read; row 0 of a model without a BOS
    token is its attention sink, whose difference is large and not about the concept)."""
    v = vector if vector.dim() == 1 else vector[-1]
    n = v.norm()
    if not n > 0:
        raise ValueError("vector: the read direction has zero norm")
    return v / n


def load_tensor(path: str, lm: LensModel | None = None) -> torch.Tensor:
    """A [d] (or [n_front, d]) tensor saved with torch.save."""
    obj = _load(path, "vector_file")
    if not isinstance(obj, torch.Tensor):
        raise ValueError(f"vector_file: {path} holds a {type(obj).__name__}, not a tensor")
    check_tensor("vector_file", obj, ndim=(1, 2), floating=True)
    return check_vector(lm, obj, "vector_file") if lm is not None else obj.to(torch.float64)


def load_directions(path: str, kind: str, site: str, lm: LensModel | None = None) -> torch.Tensor:
    """The unit `kind` vector (mean_diff, pca, lda) at `site` of a `fusedlens directions` file, float64 [d]."""
    obj = _load(path, "directions")
    if not isinstance(obj, dict) or obj.get("format") != DIRECTIONS_FORMAT:
        raise ValueError(f"directions: {path} is not a {DIRECTIONS_FORMAT} file")
    vectors, sites = obj.get("vectors"), obj.get("sites")
    if not isinstance(vectors, dict) or not isinstance(sites, list) or not all(isinstance(s, str) for s in sites):
        raise ValueError(f"directions: {path} has no vectors per site (a damaged {DIRECTIONS_FORMAT} file)")
    if kind not in vectors:
        raise ValueError(f"kind: {kind!r} is not one of {sorted(vectors)}")
    if site not in sites:
        raise ValueError(f"site: {site!r} is not in the directions file's sites ({', '.join(sites)})")
    try:
        v = vectors[kind][sites.index(site)]
    except (IndexError, KeyError, TypeError):
        v = None
    if not isinstance(v, torch.Tensor):
        raise ValueError(f"directions: {path} has no {kind} vector at {site} (a damaged {DIRECTIONS_FORMAT} file)")
    return check_vector(lm, v, "directions") if lm is not None else v.to(torch.float64)


def directions_sites(path: str) -> list[str]:
    obj = _load(path, "directions")
    if not isinstance(obj, dict) or obj.get("format") != DIRECTIONS_FORMAT:
        raise ValueError(f"directions: {path} is not a {DIRECTIONS_FORMAT} file")
    return list(obj["sites"])


def _load(path: str, name: str):
    from ..core.files import load_torch

    return load_torch(name, path)


def _prompt_ids(lm: LensModel, name: str, text) -> list[int]:
    if not isinstance(text, str) or not text:
        raise ValueError(f"{name}: expected a non-empty text")
    if lm.tokenizer is None:
        raise ValueError(f"{name}: text needs a model with a tokenizer")
    ids = list(lm.tokenizer(text)["input_ids"])
    if not ids:
        raise ValueError(f"{name}: {text!r} has no tokens")
    return ids


def actadd_pair(lm: LensModel, plus: str, minus: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The two prompts' ids, tokenized as the steered prompt is (the tokenizer's own special tokens),
    the shorter padded at its end with space tokens to the same length, as ActAdd does."""
    p, m = _prompt_ids(lm, "plus", plus), _prompt_ids(lm, "minus", minus)
    pad = lm.tokenizer(PAD, add_special_tokens=False)["input_ids"]
    if len(pad) != 1:
        raise ValueError(f"plus, minus: the tokenizer has no single space token to pad with (got {pad})")
    n = max(len(p), len(m))
    return torch.tensor(p + pad * (n - len(p))), torch.tensor(m + pad * (n - len(m)))


@torch.no_grad()
def actadd_vectors(lm: LensModel, plus: str, minus: str, sites: list[str]) -> dict[str, torch.Tensor]:
    """ActAdd (Turner et al. 2023): per site, h_site(plus) − h_site(minus) at every front position,
    float64 [n_front, d]; each prompt run alone (batch 1), its residuals captured at all sites at once."""
    sites = [check_site(lm, s) for s in sites]
    layers = sorted({int(s.split(".")[1]) for s in sites if s != "embed"} or {0})
    capture = ResidualCapture(lm, layers=layers, embed="embed" in sites, mid=any(s.startswith("mid.") for s in sites))
    p, m = actadd_pair(lm, plus, minus)
    hp, hm = capture.run(p[None]), capture.run(m[None])
    return {s: hp.hidden[hp.sites.index(s)].double() - hm.hidden[hm.sites.index(s)].double() for s in sites}


def actadd_vector(lm: LensModel, plus: str, minus: str, site: str) -> torch.Tensor:
    """ActAdd's steering block at one site: float64 [n_front, d]."""
    return actadd_vectors(lm, plus, minus, [site])[site]
