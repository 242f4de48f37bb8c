"""The readable truth: every per-row lens statistic (docs/design.md) in plain torch.

Run in float64 it is the oracle every kernel is tested against; in float32 it is
the `torch` backend. Rows are (site, token): `hidden` is [sites, tokens, d_model]
and its last site is the final layer, against which KL and agreement are taken.

Tie rule (every backend follows it):
  * top-k orders by logit descending, equal logits by ascending token id, so the
    top-1 is the lowest id among the maxima;
  * a rank counts the strictly larger logits: rank(v) = #{u : z_u > z_v}, so 0 is
    the top and tied tokens share the best rank;
  * prediction depth is the first site from which every later site's top-1 equals
    the final top-1 (sites are counted from 0; the final site's own index is the
    largest possible depth).
Target ids equal to IGNORE_INDEX (-100) give NaN target statistics and rank -1.
"""
from __future__ import annotations

import torch

from ..core.backends import COMPUTE_MODES
from ..core.checks import IGNORE_INDEX, check_ids, check_same_width, check_tensor
from ..core.readout import FinalNorm, Unembed
from .stats import LensStats, prediction_depth

MAX_SETS = 16  # token sets a lens sweep accumulates (csrc/core/lens_epilogue.h kMaxSets)

__all__ = ["LensStats", "MAX_SETS", "check_token_sets", "lens_stats", "logit_extremes", "matmul_operands",
           "prediction_depth", "stats_from_logits", "topk_tie_lowest_id"]


def topk_tie_lowest_id(z: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k along the last dim with equal values ordered by ascending index (exact)."""
    values = torch.topk(z, k, dim=-1).values  # the right values; the ids may not follow the tie rule
    taken = torch.zeros_like(z, dtype=torch.bool)
    ids = []
    for j in range(k):
        cand = (z == values[..., j:j + 1]) & ~taken
        idx = cand.to(torch.uint8).argmax(-1, keepdim=True)  # first True = lowest id
        taken.scatter_(-1, idx, True)
        ids.append(idx)
    return torch.cat(ids, -1), values


def check_token_sets(token_sets, vocab_size: int) -> tuple[torch.Tensor | None, int]:
    """token_sets: an integer tensor [vocab] of set ids (-1: in no set; at most MAX_SETS sets) → (ids, sets)."""
    if token_sets is None:
        return None, 0
    if not isinstance(token_sets, torch.Tensor) or token_sets.dim() != 1 or token_sets.is_floating_point() \
            or token_sets.dtype == torch.bool:
        raise ValueError("token_sets: expected a 1-D integer tensor of set ids, one per vocabulary entry")
    if token_sets.numel() != vocab_size:
        raise ValueError(f"token_sets: expected {vocab_size} ids (the vocabulary), got {token_sets.numel()}")
    lo, hi = (int(token_sets.min()), int(token_sets.max())) if token_sets.numel() else (-1, -1)
    if lo < -1 or hi >= MAX_SETS:
        raise ValueError(f"token_sets: set ids must be -1 (no set) or in [0, {MAX_SETS}), got {lo}..{hi}")
    return token_sets.long(), hi + 1


def set_mass_from_logits(logits: torch.Tensor, token_sets: torch.Tensor, n_sets: int) -> torch.Tensor:
    """Σ softmax(logits) over each set's members [..., sets], in logits' dtype."""
    member = torch.zeros(token_sets.numel(), n_sets, dtype=logits.dtype, device=logits.device)
    has = token_sets >= 0
    member[has.nonzero()[:, 0], token_sets[has].to(logits.device)] = 1
    return torch.softmax(logits, -1) @ member


def stats_from_logits(logits: torch.Tensor, targets: torch.Tensor | None = None, k: int = 1,
                      token_sets: torch.Tensor | None = None) -> LensStats:
    """All statistics from materialised logits [sites, tokens, vocab], computed in logits' dtype."""
    check_tensor("logits", logits, ndim=3, floating=True)
    sites, tokens, vocab = logits.shape
    if not 1 <= k <= vocab:
        raise ValueError(f"k: expected 1 <= k <= vocab ({vocab}), got {k}")
    lse = torch.logsumexp(logits, -1)
    logp = logits - lse[..., None]
    p = logp.exp()
    entropy = -(p * logp).sum(-1)
    topk_ids, topk_logits = topk_tie_lowest_id(logits, k)
    p_final, logp_final = p[-1], logp[-1]
    kl = (p_final * (logp_final - logp)).sum(-1)
    final_top1 = topk_ids[-1, :, 0]
    z_ft = logits.gather(-1, final_top1.expand(sites, tokens)[..., None])
    final_top1_rank = (logits > z_ft).sum(-1)
    target_logit = target_logprob = target_rank = None
    if targets is not None:
        targets = check_ids("targets", targets, vocab, rows=tokens).reshape(tokens)
        ignore = targets == IGNORE_INDEX
        safe = targets.clamp_min(0).expand(sites, tokens)[..., None]
        z_t = logits.gather(-1, safe)
        target_logit = z_t[..., 0].masked_fill(ignore, float("nan"))
        target_logprob = logp.gather(-1, safe)[..., 0].masked_fill(ignore, float("nan"))
        target_rank = (logits > z_t).sum(-1).masked_fill(ignore, -1)
    token_sets, n_sets = check_token_sets(token_sets, vocab)
    set_mass = None if token_sets is None else set_mass_from_logits(logits, token_sets, n_sets)
    return LensStats(lse=lse, entropy=entropy, topk_ids=topk_ids, topk_logits=topk_logits, target_logit=target_logit,
                     target_logprob=target_logprob, target_rank=target_rank, kl_to_final=kl,
                     final_top1_rank=final_top1_rank, prediction_depth=prediction_depth(topk_ids[..., 0]),
                     set_mass=set_mass)


def matmul_operands(hidden: torch.Tensor, norm: FinalNorm, unembed: Unembed, compute: str):
    """What the unembedding multiplies: the normalised residual and W_U, as `compute` sees them.

    "fp32": the residual normalised in float32 (float64 stays float64) and W_U as
    given. "bf16": both rounded to bfloat16 (round to nearest even), as a bf16
    dot-product instruction sees them; every product is then exact, so only the
    rounding of the residual, at most 2^-9 relative per element, separates the
    logits from the "fp32" ones.
    """
    if compute not in COMPUTE_MODES:
        raise ValueError(f"compute: expected one of {COMPUTE_MODES}, got {compute!r}")
    if compute == "fp32":
        return norm(hidden), unembed
    xn = norm(hidden.float()).float().bfloat16()
    return xn, Unembed(unembed.weight.bfloat16(), unembed.bias, unembed.softcap)


def lens_stats(hidden: torch.Tensor, norm: FinalNorm, unembed: Unembed, targets: torch.Tensor | None = None,
               k: int = 1, *, dtype: torch.dtype = torch.float64, compute: str = "fp32",
               max_elements: int = 1 << 25, token_sets: torch.Tensor | None = None) -> LensStats:
    """Logit-lens statistics of residuals [sites, tokens, d_model] (last site = final layer).

    Logits are materialised in `dtype` for a chunk of tokens at a time (at most
    `max_elements` logits), so memory stays bounded but the work is not fused.
    `compute="bf16"` gives the statistics of the bf16-rounded operands
    (`matmul_operands`), in `dtype`. token_sets [vocab] (-1: no set): set_mass, the
    probability of each set.
    """
    check_tensor("hidden", hidden, ndim=3, floating=True)
    check_same_width("hidden", hidden, unembed.d_model, "the unembedding's d_model")
    sites, tokens, _ = hidden.shape
    if targets is not None:
        targets = check_ids("targets", targets, unembed.vocab_size, rows=tokens).reshape(tokens)
    chunk = max(1, max_elements // (sites * unembed.vocab_size))
    parts = []
    for start in range(0, tokens, chunk):
        h = hidden[:, start:start + chunk]
        xn, head = matmul_operands(h if compute == "bf16" else h.to(dtype), norm, unembed, compute)
        logits = head(xn.to(dtype))
        parts.append(stats_from_logits(logits, None if targets is None else targets[start:start + chunk], k,
                                       token_sets))
    return LensStats.cat(parts)


def no_norm(x: torch.Tensor) -> torch.Tensor:
    """The identity in the place of a final norm, for rows that are already what W_U multiplies
    (direct logit attribution: a component's output times the final norm's frozen gain)."""
    return x


def logit_extremes(rows: torch.Tensor, weight: torch.Tensor, k: int, *, dtype: torch.dtype = torch.float64,
                   compute: str = "fp32", max_elements: int = 1 << 25):
    """The k largest and k smallest raw logits z = rows · weightᵀ of each row [R, d] over the whole vocabulary.

    z is materialised in `dtype` for a chunk of rows at a time (at most `max_elements`); no bias,
    no softcap. Returns (top_ids, top_logits, bottom_ids, bottom_logits), each [R, k]: top by
    `topk_tie_lowest_id` (descending, equal logits by ascending id), bottom the same rule on -z
    (ascending, equal logits by ascending id). compute="bf16": the extremes of the bf16-rounded
    operands (`matmul_operands`).
    """
    check_tensor("rows", rows, ndim=2, floating=True)
    check_same_width("rows", rows, weight.shape[-1], "weight's d_model")
    if not 1 <= k <= weight.shape[0]:
        raise ValueError(f"k: expected 1 <= k <= vocab ({weight.shape[0]}), got {k}")
    unembed = Unembed(weight)
    chunk = max(1, max_elements // weight.shape[0])
    parts = []
    for start in range(0, rows.shape[0], chunk):
        r = rows[start:start + chunk]
        x, head = matmul_operands(r if compute == "bf16" else r.to(dtype), no_norm, unembed, compute)
        z = head(x.to(dtype))
        top_ids, top_logits = topk_tie_lowest_id(z, k)
        bottom_ids, neg = topk_tie_lowest_id(-z, k)
        parts.append((top_ids, top_logits, bottom_ids, -neg))
    return tuple(torch.cat(p) for p in zip(*parts))
