"""Tuned lens (Belrose et al.): per-site affine translators, then the model's own read-out.

A translator maps a residual h to h + A h + b (A = 0, b = 0 at init, so an untrained
lens is the logit lens and weight decay pulls it toward the identity). Every hidden
state but the last gets one: `embed`, `resid.0` … `resid.{L-2}` and, optionally, the
mid-layer sites `mid.i`. Training minimises KL(p_final ‖ p_lens) per token with the
fused loss of `ops.lens_kl`; statistics come from `ops.lens_stats` after the
translation, so top-k, ranks and prediction depth work as for the logit lens.

Checkpoints use the tuned-lens library's format: `params.pt` holds the state dict of
the translators' ModuleList (keys `{i}.weight`, `{i}.bias`), `config.json` the
TunedLensConfig fields. Translator i of a standard lens is hidden state i of the HF
convention (0 = embeddings, i = output of block i-1). A lens with mid-layer sites adds
a `fusedlens_sites` key (the tuned-lens package ignores unknown keys but cannot load
such a lens: it has more translators than layers).
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import torch
from torch import nn

from .. import ops
from ..core.files import load_torch, read_json
from ..core.models import LensModel
from ..core.readout import FinalNorm, Unembed
from ..ops.lens_kl import lens_kl
from ..ops.stats import LensStats

PARAMS_FILE, CONFIG_FILE = "params.pt", "config.json"
LENS_TYPE = "linear_tuned_lens"


def standard_sites(n_layers: int, mid: bool = False) -> list[str]:
    """Lens sites in stream order: every hidden state but the last block's output."""
    sites = ["embed"]
    for i in range(n_layers):
        sites += ([f"mid.{i}"] if mid else []) + ([f"resid.{i}"] if i < n_layers - 1 else [])
    return sites


def unembed_hash(weight: torch.Tensor) -> str:
    """The tuned-lens package's fingerprint of the unembedding (sha256 of a 1-decimal numpy print)."""
    return hashlib.sha256(np.array_str(weight.detach().cpu().float().numpy(), precision=1).encode()).hexdigest()


class TunedLens(nn.Module):
    """Translators for `sites` (stream order, the final layer excluded) over a fixed read-out."""

    def __init__(self, sites: list[str], norm: FinalNorm, unembed: Unembed, *, bias: bool = True,
                 base_model: str = "", n_layers: int | None = None):
        super().__init__()
        if not sites:
            raise ValueError("sites: a tuned lens needs at least one site")
        d = unembed.d_model
        self.sites = list(sites)
        self.norm, self.unembed = norm, unembed
        self.base_model, self.bias = base_model, bias
        self.n_layers = n_layers if n_layers is not None else len(sites)
        self.layer_translators = nn.ModuleList(nn.Linear(d, d, bias=bias) for _ in sites)
        for t in self.layer_translators:
            nn.init.zeros_(t.weight)
            if bias:
                nn.init.zeros_(t.bias)

    @classmethod
    def from_model(cls, lm: LensModel, *, mid: bool = False, bias: bool = True) -> "TunedLens":
        name = getattr(getattr(lm.model, "config", None), "name_or_path", "") or type(lm.model).__name__
        return cls(standard_sites(lm.n_layers, mid), lm.norm, lm.unembed, bias=bias, base_model=name,
                   n_layers=lm.n_layers)

    @property
    def d_model(self) -> int:
        return self.unembed.d_model

    def translate(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [sites, tokens, d] (one row block per lens site) → h + A h + b, in float32."""
        if hidden.dim() != 3 or hidden.shape[0] != len(self.sites) or hidden.shape[-1] != self.d_model:
            raise ValueError(f"hidden: expected [{len(self.sites)}, tokens, {self.d_model}], got {tuple(hidden.shape)}")
        h = hidden.float()
        weight = torch.stack([t.weight for t in self.layer_translators])  # [S, d_out, d_in]
        out = torch.bmm(h, weight.transpose(1, 2))
        if self.bias:
            out = out + torch.stack([t.bias for t in self.layer_translators])[:, None, :]
        return h + out

    def translate_sites(self, hidden: torch.Tensor, sites: list[str] | None = None) -> torch.Tensor:
        """Residuals of captured `sites` [len(sites), tokens, d]: lens sites translated, the last block's as is.

        sites=None means this lens' own sites followed by the final layer. A captured site
        that is neither a lens site nor the last one has no translator: ValueError.
        """
        if sites is None:
            if hidden.dim() != 3 or hidden.shape[0] != len(self.sites) + 1:
                raise ValueError(f"hidden: {tuple(hidden.shape)} is not this lens' {len(self.sites)} sites plus the "
                                 "final layer; pass sites=capture.sites")
            return torch.cat([self.translate(hidden[:-1]), hidden[-1:].float()])
        if hidden.dim() != 3 or hidden.shape[0] != len(sites):
            raise ValueError(f"hidden: expected [{len(sites)}, tokens, d] (one block per site), got {tuple(hidden.shape)}")
        index = {site: i for i, site in enumerate(self.sites)}
        missing = [site for site in sites[:-1] if site not in index]
        if missing:
            raise ValueError(f"sites: the lens has no translator for {missing[:3]} (its sites: {self.sites[:3]}...)")
        rows = [i for i, site in enumerate(sites) if site in index]
        chosen = [self.layer_translators[index[sites[i]]] for i in rows]
        h = hidden.float()
        out = h.clone()
        out[rows] = h[rows] + torch.bmm(h[rows], torch.stack([t.weight for t in chosen]).transpose(1, 2)) \
            + (torch.stack([t.bias for t in chosen])[:, None, :] if self.bias else 0)
        return out

    def as_site_map(self):
        """A callable hidden, sites=None -> translate_sites(hidden, sites), without autograd (for corpus runs)."""
        def apply(hidden: torch.Tensor, sites: list[str] | None = None) -> torch.Tensor:
            with torch.no_grad():
                return self.translate_sites(hidden, sites)
        return apply

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits [sites, tokens, vocab] of the translated residuals (materialised: for small inputs)."""
        return self.unembed(self.norm(self.translate(hidden)))

    def kl_to_final(self, hidden: torch.Tensor, final: torch.Tensor, *, backend: str | None = None,
                    compute: str = "auto") -> torch.Tensor:
        """KL(p_final ‖ p_lens) [sites, tokens], differentiable wrt the translators (fused: no logits tensor).

        compute: the GEMM operands, as in `lens_kl` ("bf16" trains about twice as fast on CPUs with bf16 dot).
        """
        xf = self.norm(final.detach()).float()
        return lens_kl(self.norm(self.translate(hidden)), xf, self.unembed, backend=backend, compute=compute).kl

    @torch.no_grad()
    def lens_stats(self, hidden: torch.Tensor, targets: torch.Tensor | None = None, k: int = 1, *,
                   backend: str | None = None, token_sets: torch.Tensor | None = None) -> LensStats:
        """ops.lens_stats of hidden [sites + 1, tokens, d] (last = final layer) seen through the lens."""
        return ops.lens_stats(self.translate_sites(hidden), self.norm, self.unembed, targets, k, backend=backend,
                              token_sets=token_sets)

    # ---- the tuned-lens library's checkpoint format
    def config_dict(self) -> dict:
        cfg = {"base_model_name_or_path": self.base_model, "d_model": self.d_model,
               "num_hidden_layers": len(self.sites), "bias": self.bias, "base_model_revision": None,
               "unembed_hash": unembed_hash(self.unembed.weight), "lens_type": LENS_TYPE}
        if self.sites != standard_sites(len(self.sites)):
            cfg["fusedlens_sites"] = self.sites
        return cfg

    def save(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        torch.save(self.layer_translators.state_dict(), os.path.join(path, PARAMS_FILE))
        with open(os.path.join(path, CONFIG_FILE), "w") as f:
            json.dump(self.config_dict(), f)

    @classmethod
    def load(cls, path: str, lm: LensModel, *, name: str = "lens", check_unembed: bool = True) -> "TunedLens":
        """A lens saved here or by the tuned-lens package, over lm's read-out.

        Every defect of the folder is a ValueError naming `name` (the argument that gave the path) and
        the file. The lens must have been trained for this model: its d_model, translator count and,
        where config.json records one, `unembed_hash` must match (check_unembed=False skips the hash,
        for a lens knowingly moved to a model with another unembedding).
        """
        cfg = read_config(path, name)
        cfg_path, params_path = os.path.join(path, CONFIG_FILE), os.path.join(path, PARAMS_FILE)
        if cfg.get("d_model") != lm.d_model:
            raise ValueError(f"{name}: {cfg_path}: the lens has d_model {cfg.get('d_model')!r}, the model {lm.d_model}")
        sites = cfg.get("fusedlens_sites")
        if sites is not None:
            want = standard_sites(lm.n_layers, mid=any(s.startswith("mid.") for s in sites))
            if sites != want:
                raise ValueError(f"{name}: {cfg_path}: sites {sites[:3]}... do not match the model's "
                                 f"{len(want)} lens sites {want[:3]}...")
        else:
            if cfg["num_hidden_layers"] != lm.n_layers:
                raise ValueError(f"{name}: {cfg_path}: the lens has {cfg['num_hidden_layers']} translators, the model "
                                 f"{lm.n_layers} layers")
            sites = standard_sites(lm.n_layers)
        saved_hash = cfg.get("unembed_hash")
        if check_unembed and saved_hash is not None and saved_hash != unembed_hash(lm.unembed.weight):
            raise ValueError(f"{name}: {path} was trained for another model (its unembed_hash differs from this "
                             "model's unembedding); train a lens for this model, or pass --ignore-unembed-hash "
                             "if you mean to read it through this one")
        lens = cls(sites, lm.norm, lm.unembed, bias=bool(cfg.get("bias", True)),
                   base_model=str(cfg.get("base_model_name_or_path") or ""), n_layers=lm.n_layers)
        state = load_torch(name, params_path)
        want_keys = lens.layer_translators.state_dict()
        if not isinstance(state, dict) or set(state) != set(want_keys) or not all(
                isinstance(v, torch.Tensor) and v.shape == want_keys[k].shape for k, v in state.items()):
            raise ValueError(f"{name}: {params_path} does not hold the {len(sites)} translators of {cfg_path} "
                             f"(weights [{lm.d_model}, {lm.d_model}]" + (", biases" if lens.bias else "") + ")")
        if not all(bool(torch.isfinite(v).all()) for v in state.values()):
            raise ValueError(f"{name}: {params_path} holds NaN or Inf weights")
        lens.layer_translators.load_state_dict({k: v.float() for k, v in state.items()})
        return lens.to(lm.device)


def read_config(path: str, name: str = "lens") -> dict:
    """A tuned lens folder's config.json, checked for shape (not yet against a model): what can be told
    of a lens before the model loads. ValueError naming `name` and the file otherwise."""
    if not os.path.isdir(path):
        raise ValueError(f"{name}: {path} is not a tuned lens folder (one holding {CONFIG_FILE} and {PARAMS_FILE}); "
                         f"train one with `fusedlens tuned train --out {path}`")
    cfg_path, params_path = os.path.join(path, CONFIG_FILE), os.path.join(path, PARAMS_FILE)
    for p in (cfg_path, params_path):
        if not os.path.isfile(p):
            raise ValueError(f"{name}: {p} not found (a tuned lens folder holds {CONFIG_FILE} and {PARAMS_FILE})")
    cfg = read_json(name, cfg_path)
    if cfg.get("lens_type", LENS_TYPE) != LENS_TYPE:
        raise ValueError(f"{name}: {cfg_path}: lens_type {cfg['lens_type']!r} is not {LENS_TYPE!r}")
    d = cfg.get("d_model")
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise ValueError(f"{name}: {cfg_path}: d_model must be a positive integer, got {d!r}")
    sites = cfg.get("fusedlens_sites")
    if sites is not None:
        if not isinstance(sites, list) or not sites or not all(isinstance(s, str) for s in sites):
            raise ValueError(f"{name}: {cfg_path}: fusedlens_sites must be a non-empty list of site names")
    else:
        n = cfg.get("num_hidden_layers")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{name}: {cfg_path}: num_hidden_layers must be a positive integer, got {n!r}")
    if not isinstance(cfg.get("unembed_hash"), (str, type(None))):
        raise ValueError(f"{name}: {cfg_path}: unembed_hash must be a string or null")
    return cfg
