"""Exact patches of chosen nodes, and the check of an attribution estimate against them.

`exact_effects` patches each (site, position) of the clean runs into the corrupted ones alone, one
batch row per node, rerunning only what the patch can reach (intervene.suffix), and returns the
metric change averaged over the pairs. `verify` spends that on
the top-k nodes of each kind by |estimate| and on a uniform sample of the rest, and bounds what the
estimate may have missed, as Kramár et al. 2024 ask of AtP*: from the sample, a one-sided 95 %
Clopper–Pearson upper bound on the fraction of unverified nodes whose true |effect| reaches the
threshold.
"""
from __future__ import annotations

import math
import random

import torch

from ..core.models import LensModel
from .hooks import Edit, Intervention
from .patching import metric_of
from .suffix import SuffixRuns


def site_name(kind: str, index: tuple) -> str:
    """The write-hook site of a node at layout index (without the position)."""
    if kind == "resid":
        return "embed" if index[0] == 0 else f"resid.{index[0] - 1}"
    if kind in ("attn", "mlp"):
        return f"{kind}.{index[0]}"
    return f"{kind}.{index[0]}.{index[1]}"


def _last_metric(lm: LensModel, ids: torch.Tensor, metric: str, answer: int, counter: int | None) -> torch.Tensor:
    with torch.no_grad():
        logits = lm.model(input_ids=ids.to(lm.device), use_cache=False, logits_to_keep=1).logits[:, -1]
    return metric_of(logits, metric, answer, counter).cpu()


def exact_effects(lm: LensModel, pairs, nodes: list[tuple[str, int]], metric: str,
                  batch_size: int = 32) -> torch.Tensor:
    """[len(nodes)] float64: the metric change of patching each (site, position) alone, averaged over
    pairs [(clean ids [T], corrupted ids [T], answer, counterfactual)]."""
    total = torch.zeros(len(nodes), dtype=torch.float64)
    sites = sorted({s for s, _ in nodes})
    for clean, bad, a, b in pairs:
        seen = {}

        def record(site):
            def f(h):
                seen[site] = h.detach().clone()
                return h
            return f

        with torch.no_grad(), Intervention(lm, [Edit(s, "apply", record(s)) for s in sites]):
            lm.model(input_ids=clean[None].to(lm.device), use_cache=False, logits_to_keep=1)
        base = float(_last_metric(lm, bad[None], metric, a, b))
        got = SuffixRuns(lm, bad).metrics([(s, seen[s][0, p], p) for s, p in nodes],
                                          lambda z: metric_of(z, metric, a, b).cpu(), batch_size)
        total += got - base
    return total / len(pairs)


def clopper_pearson_upper(misses: int, n: int, alpha: float = 0.05) -> float:
    """One-sided upper bound on a binomial rate from `misses` of `n` (1 − alpha confidence)."""
    if n == 0:
        return 1.0
    if misses >= n:
        return 1.0

    def cdf(p):  # P(X <= misses) for X ~ Binomial(n, p)
        return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(misses + 1))

    lo, hi = misses / n, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) > alpha else (lo, mid)
    return hi


def verify(lm: LensModel, estimate: dict, pairs, metric: str, *, top: int, sample: int, threshold: float,
           seed: int = 0, batch_size: int = 32, score=None) -> dict:
    """Per kind: exact effects of the top nodes by |estimate| and of a uniform sample of the rest; the
    sample's nodes at or above `threshold` (|exact|) are the estimate's misses, and `bound` the upper
    bound on their fraction among all unverified nodes."""
    rng = random.Random(seed)
    out = {}
    for kind, est in estimate.items():
        flat = est.reshape(-1).abs() if score is None else score[kind].reshape(-1).abs()
        order = torch.argsort(flat, descending=True, stable=True).tolist()
        chosen, rest = order[:top], order[top:]
        sampled = rng.sample(rest, min(sample, len(rest)))
        shape = tuple(est.shape)
        nodes = []
        for i in chosen + sampled:
            index = tuple(int(x) for x in torch.unravel_index(torch.tensor(i), shape))
            nodes.append((index, (site_name(kind, index[:-1]), index[-1])))
        exact = exact_effects(lm, pairs, [n for _, n in nodes], metric, batch_size) if nodes else torch.zeros(0)
        rows = [{"index": list(idx), "site": site, "position": pos, "estimate": float(est[idx]),
                 "exact": float(x)} for (idx, (site, pos)), x in zip(nodes, exact.tolist())]
        misses = [r for r in rows[len(chosen):] if abs(r["exact"]) >= threshold]
        bound = clopper_pearson_upper(len(misses), len(sampled))
        out[kind] = {"nodes": int(est.numel()), "top": rows[:len(chosen)], "sample": rows[len(chosen):],
                     "threshold": threshold, "sampled_misses": len(misses), "miss_rate_bound": bound,
                     "unverified": len(rest), "missed_nodes_bound": bound * len(rest)}
    return out


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Mid-ranks (ties share their mean rank), float64."""
    order = torch.argsort(x, stable=True)
    s = x[order]
    first = torch.searchsorted(s, s, right=False).double()
    last = torch.searchsorted(s, s, right=True).double()
    r = torch.empty_like(x, dtype=torch.float64)
    r[order] = (first + last - 1) / 2
    return r


def _pearson(x: torch.Tensor, y: torch.Tensor) -> float | None:
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    den = float(x.norm() * y.norm())
    return float(x @ y) / den if den > 0 else None


def exact_grid(lm: LensModel, pairs, shapes: dict, metric: str, batch_size: int = 32, progress=None) -> dict:
    """kind -> the exact effect of patching every node alone, in the attribution layout `shapes[kind]`
    ([layers(, heads | neurons), positions]), averaged over the pairs (see exact_effects)."""
    out = {}
    for kind, shape in shapes.items():
        cells = [tuple(int(v) for v in torch.unravel_index(torch.tensor(i), tuple(shape)))
                 for i in range(math.prod(shape))]
        nodes = [(site_name(kind, c[:-1]), c[-1]) for c in cells]
        out[kind] = exact_effects(lm, pairs, nodes, metric, batch_size).reshape(tuple(shape))
        if progress is not None:
            progress(kind, len(nodes))
    return out


def compare_with_exact(exact: dict, estimate, top: int = 20) -> dict:
    """Per kind both have (exact: kind -> effects in the estimate's layout, e.g. a PatchResult's values
    minus its corrupted metric): Pearson and Spearman correlation of the estimate with the exact effect
    over all nodes (|estimate| against |effect| when the estimate is a magnitude), and the true
    top-`top` nodes by |effect| that the estimate's top-`top` misses."""
    out = {}
    for kind in [k for k in estimate.kinds if k in exact]:
        true = exact[kind].double().reshape(-1)
        est = estimate.estimate[kind].reshape(-1).double()
        keep = ~torch.isnan(true)
        shape = tuple(exact[kind].shape)
        truth = true.abs() if estimate.magnitude_only else true
        x, y = est[keep], truth[keep]
        n = min(top, int(keep.sum()))
        idx = keep.nonzero()[:, 0]
        true_top = idx[torch.argsort(true[keep].abs(), descending=True, stable=True)[:n]].tolist()
        est_top = set(idx[torch.argsort(est[keep].abs(), descending=True, stable=True)[:n]].tolist())
        rank = {i: r for r, i in enumerate(idx[torch.argsort(est[keep].abs(), descending=True, stable=True)].tolist())}
        missed = [{"index": [int(v) for v in torch.unravel_index(torch.tensor(i), shape)], "exact": float(true[i]),
                   "estimate": float(est[i]), "estimate_rank": rank[i] + 1} for i in true_top if i not in est_top]
        out[kind] = {"nodes": int(keep.sum()), "pearson": _pearson(x, y), "spearman": _pearson(_ranks(x), _ranks(y)),
                     "top": n, "missed": missed}
    return out
