"""Linear probes of every layer's residual stream over a corpus, in one streaming pass.

The experiment: let x_t be a layer's residual at token t and y_t the final logit the
model gave the correct next token; fit y_t ≈ wᵀx_t + b by ridge regression, per
layer, and report held-out R². Each batch is one forward: the captured residuals of
all sites go straight into RidgeAccumulators (fp32 batch Grams, float64 totals), and
the targets come from the same forward's final residual through the fused lens ops
(`ops.target_logit`, `ops.lens_stats` on the final site only), never from a logits
tensor. The training tokens are split into k folds (by window, round robin) to choose
the penalty; the held-out tokens follow the training tokens in the corpus.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
from tqdm.auto import tqdm

from . import ops
from ._checks import IGNORE_INDEX
from .capture import ResidualCapture, Residuals
from .demo import pydoc_text
from .models import LensModel, load_model
from .ridge import RidgeAccumulator
from .ridge_solve import DEFAULT_ALPHAS, cross_validate

# Built-in targets, all of the final output at the correct next token (loss = −logprob).
TARGETS = ("logit", "logprob", "entropy", "loss")


@dataclass
class ProbeResult:
    """Per-site, per-target fit summaries ([site][target] dicts from ridge_solve.cross_validate) and the run's facts."""

    sites: list[str]
    targets: list[str]
    fits: list[list[dict]]
    n_layers: int
    meta: dict = field(default_factory=dict)

    def rows(self) -> list[dict]:
        return [{"site": site, "targets": dict(zip(self.targets, per_target))}
                for site, per_target in zip(self.sites, self.fits)]

    def claim(self, target: str | None = None, threshold: float = 0.6) -> dict:
        """'Layers in the second half of the model, except the last, have held-out R² > threshold.'"""
        target = target or self.targets[0]
        j = self.targets.index(target)
        half = [(site, fit[j]["r2_heldout"]) for site, fit in zip(self.sites, self.fits)
                if site.startswith("resid.") and self.n_layers // 2 <= int(site.split(".")[1]) < self.n_layers - 1]
        vals = [v for _, v in half if v is not None]
        return {"statement": f"resid.{self.n_layers // 2}..resid.{self.n_layers - 2} have held-out R² > {threshold} "
                             f"for target {target!r}",
                "sites": [s for s, _ in half], "min_r2_heldout": min(vals) if vals else None,
                "holds": bool(vals) and len(vals) == len(half) and min(vals) > threshold}


def token_windows(ids: torch.Tensor, seq_len: int) -> list[torch.Tensor]:
    """Windows of seq_len + 1 tokens overlapping by one, so every token but the last is a row with a target."""
    return [ids[i:i + seq_len + 1] for i in range(0, ids.numel() - 1, seq_len)]


def corpus_ids(lm: LensModel, corpus, n_tokens: int) -> torch.Tensor:
    """The first n_tokens + 1 token ids of corpus (text, or a 1-D tensor of ids)."""
    if isinstance(corpus, str):
        if lm.tokenizer is None:
            raise ValueError("corpus: text needs a model with a tokenizer; pass token ids instead")
        ids = lm.tokenizer(corpus, return_tensors="pt", add_special_tokens=False).input_ids[0]
    elif isinstance(corpus, torch.Tensor) and corpus.dim() == 1 and not corpus.is_floating_point():
        ids = corpus.long()
    else:
        raise ValueError("corpus: expected text or a 1-D integer tensor of token ids")
    if ids.numel() < n_tokens + 1:
        raise ValueError(f"corpus: {ids.numel()} tokens, need {n_tokens + 1} (train + held-out + 1)")
    return ids[:n_tokens + 1]


class TargetMaker:
    """The target matrix [rows, m] of one batch: built-in final-output targets, then the user's."""

    def __init__(self, lm: LensModel, targets, extra: Mapping[str, torch.Tensor | Callable] | None, n_tokens: int):
        unknown = [t for t in targets if t not in TARGETS]
        if unknown or len(set(targets)) != len(targets):
            raise ValueError(f"targets: expected distinct names from {TARGETS}, got {list(targets)}")
        self.lm, self.builtin, self.extra = lm, list(targets), dict(extra or {})
        for name, t in self.extra.items():
            if name in TARGETS:
                raise ValueError(f"extra_targets: {name!r} is a built-in target name")
            if isinstance(t, torch.Tensor) and (t.dim() not in (1, 2) or t.shape[0] != n_tokens):
                raise ValueError(f"extra_targets[{name!r}]: expected [{n_tokens}] or [{n_tokens}, k] "
                                 f"(one row per train + held-out token), got {tuple(t.shape)}")
            if not (isinstance(t, torch.Tensor) or callable(t)):
                raise ValueError(f"extra_targets[{name!r}]: expected a tensor or a function of the batch")
        if not self.builtin and not self.extra:
            raise ValueError("targets: nothing to probe")
        self.names: list[str] | None = None

    def __call__(self, res: Residuals, keep: torch.Tensor, stream_pos: torch.Tensor) -> torch.Tensor:
        cols, dev = [], res.hidden.device
        if self.builtin:
            h_final, ids = res.hidden[-1][keep.to(dev)], res.targets[keep].to(dev)
            un = self.lm.unembed
            logit = ops.target_logit(self.lm.norm(h_final), un.weight, ids, un.bias, softcap=un.softcap)
            made = {"logit": logit}
            if set(self.builtin) - {"logit"}:  # the final layer's lse and entropy, fused over the vocabulary
                stats = ops.lens_stats(h_final[None], self.lm.norm, un)
                lse, entropy = stats.lse[0], stats.entropy[0]
                made.update(logprob=logit - lse, entropy=entropy, loss=lse - logit)
            cols += [made[t][:, None] for t in self.builtin]
        names = list(self.builtin)
        for name, t in self.extra.items():
            v = t[stream_pos.to(t.device)] if isinstance(t, torch.Tensor) else torch.as_tensor(t(res))
            if not isinstance(t, torch.Tensor):
                if v.shape[:1] != keep.shape:
                    raise ValueError(f"extra_targets[{name!r}]: the function gave shape {tuple(v.shape)}, expected one "
                                     f"value or row per token of the batch ({keep.shape[0]})")
                v = v[keep.to(v.device)]
            v = v.reshape(int(keep.sum()), -1).to(torch.float32)
            names += [name] if v.shape[1] == 1 else [f"{name}.{i}" for i in range(v.shape[1])]
            cols.append(v)
        if self.names is None:
            self.names = names
        elif names != self.names:
            raise ValueError(f"extra_targets: the number of columns changed between batches ({self.names} -> {names})")
        return torch.cat([c.to(dev).float() for c in cols], 1)


def probe(lm: LensModel | None = None, corpus=None, *, train_tokens: int = 24_000, heldout_tokens: int = 8_000,
          seq_len: int = 512, layers=None, embed: bool = True, targets=("logit",), extra_targets=None,
          folds: int = 5, alphas=DEFAULT_ALPHAS, backend: str | None = None, progress: bool = True) -> ProbeResult:
    """Fit ridge probes of `targets` on every captured site over train_tokens, report on the next heldout_tokens.

    lm: a LensModel (default: the embedded SmolLM2-135M); corpus: text or token ids
    (default: pydoc_data.topics); layers: block indices to probe (default all), plus the
    embedding output if `embed`; targets: names from TARGETS; extra_targets: {name:
    tensor [train + held-out tokens (, k)] indexed by corpus position, or fn(Residuals)
    -> one value (or row) per real token of the batch}; folds: k of the k-fold choice of
    α among `alphas` (λ = α·tr(Gc)/d); backend: of the accumulation kernel.
    """
    for name, v, low in (("train_tokens", train_tokens, 2 * folds), ("heldout_tokens", heldout_tokens, 0),
                         ("seq_len", seq_len, 1), ("folds", folds, 2)):
        if not isinstance(v, int) or v < low:
            raise ValueError(f"{name}: expected an int >= {low}, got {v!r}")
    t_start = time.perf_counter()
    lm = lm or load_model()
    ids = corpus_ids(lm, pydoc_text() if corpus is None else corpus, train_tokens + heldout_tokens)
    make_targets = TargetMaker(lm, list(targets), extra_targets, train_tokens + heldout_tokens)
    n = lm.n_layers
    wanted = list(range(n)) if layers is None else sorted({int(i) % n for i in layers})
    capture = ResidualCapture(lm, layers=sorted(set(wanted) | {n - 1}), embed=embed)  # the last block gives targets
    sites = (["embed"] if embed else []) + [f"resid.{i}" for i in wanted]
    site_index = torch.tensor([capture.sites.index(s) for s in sites])
    windows = [(0, w) for w in token_windows(ids[:train_tokens + 1], seq_len)]
    if heldout_tokens:
        windows += [(1, w) for w in token_windows(ids[train_tokens:], seq_len)]
    n_train_windows = sum(1 for split, _ in windows if split == 0)
    if n_train_windows < folds:
        raise ValueError(f"folds: {folds} folds need at least {folds} training windows of seq_len {seq_len}, "
                         f"got {n_train_windows}")

    accs: list[RidgeAccumulator] = []
    timing = {"forward_s": 0.0, "targets_s": 0.0, "accumulate_s": 0.0}
    start = 0  # corpus position of the batch's first row
    for i, (split, window) in enumerate(tqdm(windows, desc="probe", unit="window", disable=not progress)):
        t0 = time.perf_counter()
        res = capture.run(window[None])
        t1 = time.perf_counter()
        keep = res.targets != IGNORE_INDEX
        n_keep = int(keep.sum())
        y = make_targets(res, keep, start + torch.arange(n_keep))
        start += n_keep
        t2 = time.perf_counter()
        if not accs:
            accs = [RidgeAccumulator(len(sites), lm.d_model, y.shape[1], backend=backend, device=res.hidden.device)
                    for _ in range(folds + 1)]
        x = res.hidden if len(sites) == len(capture.sites) else res.hidden.index_select(0, site_index.to(y.device))
        x = x[:, :n_keep] if bool(keep[:n_keep].all()) else x[:, keep.to(x.device)]  # one window: a prefix, no copy
        accs[folds if split else i % folds].update(x, y)
        timing["forward_s"] += t1 - t0
        timing["targets_s"] += t2 - t1
        timing["accumulate_s"] += time.perf_counter() - t2
    t3 = time.perf_counter()
    fits = cross_validate(accs[:folds], accs[folds] if heldout_tokens else None, alphas)
    timing["solve_s"] = time.perf_counter() - t3
    timing["total_s"] = time.perf_counter() - t_start
    meta = {"model": lm.describe(), "train_tokens": train_tokens, "heldout_tokens": heldout_tokens,
            "seq_len": seq_len, "folds": folds, "alphas": [float(a) for a in alphas],
            "backend": backend or ops.pick_backend(lm.device, None), "timing": timing}
    return ProbeResult(sites, make_targets.names, fits, n, meta)
