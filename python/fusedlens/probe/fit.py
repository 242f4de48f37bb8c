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

import torch
from tqdm.auto import tqdm

from ..core.backends import pick_backend
from ..core.capture import ResidualCapture, check_layers
from ..core.checks import IGNORE_INDEX
from ..core.models import LensModel, load_model
from ..data.windows import corpus_ids, windows
from .folds import Folds
from .solve import DEFAULT_ALPHAS
from .targets import TargetMaker


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
    if corpus is not None and isinstance(corpus, str) and lm.tokenizer is None:
        raise ValueError("corpus: text needs a model with a tokenizer; pass token ids instead")
    n_ids = train_tokens + heldout_tokens + 1  # every row needs its next token
    ids = corpus_ids(lm.tokenizer, corpus, None)
    if ids.numel() < n_ids:
        raise ValueError(f"corpus: {ids.numel()} tokens, need {n_ids} (train + held-out + 1)")
    ids = ids[:n_ids]
    make_targets = TargetMaker(lm, list(targets), extra_targets, train_tokens + heldout_tokens)
    n = lm.n_layers
    wanted = list(range(n)) if layers is None else check_layers(layers, n)
    capture = ResidualCapture(lm, layers=sorted(set(wanted) | {n - 1}), embed=embed)  # the last block gives targets
    sites = (["embed"] if embed else []) + [f"resid.{i}" for i in wanted]
    site_index = torch.tensor([capture.sites.index(s) for s in sites])
    parts = [(False, w) for w in windows(ids[:train_tokens + 1], seq_len, overlap=1)]
    if heldout_tokens:
        parts += [(True, w) for w in windows(ids[train_tokens:], seq_len, overlap=1)]
    n_train_windows = sum(1 for held, _ in parts if not held)
    if n_train_windows < folds:
        raise ValueError(f"folds: {folds} folds need at least {folds} training windows of seq_len {seq_len}, "
                         f"got {n_train_windows}")

    buckets: Folds | None = None
    timing = {"forward_s": 0.0, "targets_s": 0.0, "accumulate_s": 0.0}
    start = 0  # corpus position of the batch's first row
    for i, (held, window) in enumerate(tqdm(parts, desc="probe", unit="window", disable=not progress)):
        t0 = time.perf_counter()
        res = capture.run(window[None])
        t1 = time.perf_counter()
        keep = res.targets != IGNORE_INDEX
        n_keep = int(keep.sum())
        y = make_targets(res, keep, start + torch.arange(n_keep))
        start += n_keep
        t2 = time.perf_counter()
        if buckets is None:
            buckets = Folds(folds, len(sites), lm.d_model, y.shape[1], backend=backend, device=res.hidden.device)
        x = res.hidden if len(sites) == len(capture.sites) else res.hidden.index_select(0, site_index.to(y.device))
        x = x[:, :n_keep] if bool(keep[:n_keep].all()) else x[:, keep.to(x.device)]  # one window: a prefix, no copy
        buckets.add(Folds.after_training(i, folds, held), x, y)
        timing["forward_s"] += t1 - t0
        timing["targets_s"] += t2 - t1
        timing["accumulate_s"] += time.perf_counter() - t2
    t3 = time.perf_counter()
    fits = buckets.fit(alphas, heldout=bool(heldout_tokens))
    timing["solve_s"] = time.perf_counter() - t3
    timing["total_s"] = time.perf_counter() - t_start
    meta = {"model": lm.describe(), "train_tokens": train_tokens, "heldout_tokens": heldout_tokens,
            "seq_len": seq_len, "folds": folds, "alphas": [float(a) for a in alphas],
            "backend": backend or pick_backend(lm.device, None), "timing": timing}
    return ProbeResult(sites, make_targets.names, fits, n, meta)
