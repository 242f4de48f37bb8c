"""`directions()`: reading vectors of every site from one streamed pass over a contrast, then their
held-out scores.

The training pairs come first: each batch of B pairs is one right-padded forward of 2B sequences
(positives, then negatives) through `core.capture`; its selected rows go into `ClassStats` (per
class) and each pair's difference of its two mean selected residuals into the paired part. Nothing
is kept. The vectors are then solved per site, and the held-out pairs that follow are scored as
they stream by (one float per row, site and kind: the AUROC needs them all). Under
torch.distributed each rank takes every world-th batch; the sums are all-reduced and the held-out
scores gathered.
"""
from __future__ import annotations

import time
import warnings

import torch
from tqdm.auto import tqdm

from ..core.capture import ResidualCapture, check_layers
from ..core.models import LensModel, load_model
from ..data.windows import pad_right
from .inputs import Item, read_pairs, split
from .result import DirectionsResult
from .solve import KINDS, check_ridge, projection_scores, site_directions
from .stats import ClassStats


def _dist():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist, dist.get_rank(), dist.get_world_size()
    return None, 0, 1


def batch_rows(capture: ResidualCapture, pairs: list[tuple[Item, Item]]):
    """One forward of a batch of pairs → rows x [S, R, d], labels [R] (1 = positive), and each row's
    sequence (0..B-1 the positives, B..2B-1 their negatives)."""
    seqs = [p.ids for p, _ in pairs] + [q.ids for _, q in pairs]
    select = [p.select for p, _ in pairs] + [q.select for _, q in pairs]
    ids, mask = pad_right(seqs)
    res = capture.run(ids, mask)
    sel_mask = torch.zeros_like(mask, dtype=torch.bool)
    for b, s in enumerate(select):
        sel_mask[b, :s.numel()] = s
    keep = sel_mask[res.batch_index.cpu(), res.position.cpu()].to(res.hidden.device)
    x, seq = res.hidden[:, keep], res.batch_index.to(res.hidden.device)[keep]
    if not bool(torch.isfinite(x).all()):  # a broken model or input: name the sites and the texts
        bad = ~torch.isfinite(x)
        at = [capture.sites[i] for i in bad.flatten(1).any(1).nonzero()[:, 0].tolist()]
        rows = seq[bad.any(-1).any(0)].unique().tolist()
        where = [pairs[b % len(pairs)][0 if b < len(pairs) else 1].where for b in rows[:3]]
        raise ValueError(f"residuals: {int(bad.sum())} NaN/Inf value(s) at site(s) {', '.join(at)} "
                         f"({'; '.join(where)})")
    return x, (seq < len(pairs)).long(), seq


def pair_differences(x: torch.Tensor, seq: torch.Tensor, n_pairs: int) -> torch.Tensor:
    """Per pair, the positive's mean selected residual minus the negative's: [S, B, d] (float64 sums)."""
    sums = x.new_zeros(x.shape[0], 2 * n_pairs, x.shape[2], dtype=torch.float64).index_add_(1, seq, x.double())
    counts = torch.bincount(seq, minlength=2 * n_pairs).to(sums)
    means = sums / counts[None, :, None]
    return means[:, :n_pairs] - means[:, n_pairs:]


def _model_name(lm: LensModel) -> str:
    import os

    name = getattr(getattr(lm.model, "config", None), "_name_or_path", "") or ""
    return os.path.basename(str(name).rstrip("/")) or type(lm.model).__name__


@torch.no_grad()
def directions(lm: LensModel | None = None, *, pos=None, neg=None, pairs=None, labeled=None,
               label_key: str = "label", positive=None, position: str = "last", layers=None,
               heldout: float = 0.2, seed: int = 0, lda_ridge: float = 0.1, batch_size: int = 16,
               backend: str | None = None, progress: bool = True) -> DirectionsResult:
    """Difference-of-means, paired-difference PCA (RepE) and ridge-regularised LDA directions at every
    site (embed and resid.i of `layers`, default all), from a contrast given as pos + neg, pairs or a
    labeled file (paths or lists of records; see directions.inputs), with held-out accuracy and AUROC.

    position: "last", "all" or "span"; heldout: the fraction of pairs held out (a seeded, deterministic
    split by pair); lda_ridge: λ of (Σ_pooled + λ·(tr Σ_pooled / d)·I)⁻¹(μ+ − μ−); batch_size: pairs per
    forward; backend: of the accumulation kernel (ops.ridge_gram).
    """
    t0 = time.perf_counter()
    lda_ridge = check_ridge(lda_ridge)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    items, _ = read_pairs(None, pos=pos, neg=neg, pairs=pairs, labeled=labeled, label_key=label_key,
                          positive=positive, position=position)  # every file checked before the model loads
    split(len(items), heldout, seed)
    lm = lm or load_model()
    if not isinstance(lm, LensModel):
        raise ValueError(f"lm: expected a LensModel, got {type(lm).__name__}")
    if lm.tokenizer is None:
        raise ValueError("lm: reading texts needs a model with a tokenizer")
    items, info = read_pairs(lm.tokenizer, pos=pos, neg=neg, pairs=pairs, labeled=labeled, label_key=label_key,
                             positive=positive, position=position)
    limit = getattr(lm, "context_length", None)
    for item in (it for pair in items for it in pair):
        if limit is not None and item.ids.numel() > limit:
            raise ValueError(f"{item.where}: {item.ids.numel()} tokens, more than the model's context of {limit}")
    train, held = split(len(items), heldout, seed)
    wanted = list(range(lm.n_layers)) if layers is None else check_layers(layers, lm.n_layers)
    capture = ResidualCapture(lm, layers=wanted, embed=True)
    sites = list(capture.sites)
    dist, rank, world = _dist()
    stats = ClassStats(len(sites), lm.d_model, backend=backend, device=lm.device)

    def batches(idx):
        chunks = [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
        return [[items[j] for j in c] for k, c in enumerate(chunks) if k % world == rank]

    bar = tqdm(total=len(train) + len(held), desc="directions", unit="pair", disable=not progress or rank != 0)
    for batch in batches(train):
        x, labels, seq = batch_rows(capture, batch)
        stats.update(x, labels)
        stats.update_pairs(pair_differences(x, seq, len(batch)).float())
        bar.update(len(batch) * world)
    if dist is not None:
        stats.all_reduce()
    t1 = time.perf_counter()

    vectors = {k: [] for k in KINDS}
    facts, means = [], ([], [])
    for s in range(len(sites)):
        st = stats.site(s)
        vecs, f = site_directions(st, lda_ridge)
        for k in KINDS:
            vectors[k].append(vecs[k].float())
        facts.append(f)
        means[0].append(st.mean_pos)
        means[1].append(st.mean_neg)
    singular = [i for i, f in enumerate(facts) if f["singular"]]
    if singular:
        i, rows = singular[0], stats.acc["pos"].n + stats.acc["neg"].n
        why = f": {rows} rows, fewer than d_model + 2" if rows - 2 < lm.d_model else ""
        warnings.warn(f"directions: the pooled covariance is singular at {len(singular)} of {len(sites)} sites "
                      f"(rank {facts[i]['cov_rank']} of {lm.d_model} at {sites[i]}{why}); "
                      f"LDA uses the ridge λ = {lda_ridge}" + (" (0: the pseudo-inverse)" if lda_ridge == 0 else ""),
                      stacklevel=3)
    result = DirectionsResult(_model_name(lm), sites, {k: torch.stack(v) for k, v in vectors.items()},
                              torch.stack(means[0]), torch.stack(means[1]), lda_ridge, position, facts,
                              {**info, "heldout": heldout, "seed": seed, "n_pairs_train": len(train),
                               "n_pairs_heldout": len(held), "model_info": lm.describe()})

    V, mid = result.stacked(), result.midpoints()
    scores, labels = [], []
    for batch in batches(held):
        x, lab, seq = batch_rows(capture, batch)
        # rows in pair order (each pair's positive rows, then its negative's), whatever the batching
        order = torch.sort((seq % len(batch)) * 2 + (seq >= len(batch)).long(), stable=True).indices
        scores.append(projection_scores(V.to(x.device), mid.to(x.device), x[:, order]).cpu())
        labels.append(lab[order].cpu())
        bar.update(len(batch) * world)
    bar.close()
    if dist is not None:
        gathered = [None] * world
        dist.all_gather_object(gathered, (scores, labels))
        # back to held-out order: chunk k was scored by rank k % world, as its (k // world)-th
        n_chunks = sum(len(g[0]) for g in gathered)
        scores = [gathered[k % world][0][k // world] for k in range(n_chunks)]
        labels = [gathered[k % world][1][k // world] for k in range(n_chunks)]
    result.evaluate(torch.cat(scores, -1) if scores else None, torch.cat(labels) if labels else None)
    result.meta["timing"] = {"accumulate_s": t1 - t0, "total_s": time.perf_counter() - t0}
    return result
