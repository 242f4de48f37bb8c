"""ops.logit_extremes: the k largest and the k smallest raw logits of many rows over the whole vocabulary.

For direct logit attribution: each row r is one component's direct contribution to the
residual, already multiplied by the final norm's frozen gain, and z = r · W_Uᵀ (no bias, no
softcap) is its direct effect on every logit. One sweep over vocabulary tiles finds the
tokens it promotes most (top-k) and suppresses most (bottom-k) without materialising
[rows × vocab]. Dispatch to the C++ sweep (`csrc/torch/logit_extremes.cpp`), the Triton
kernel (`kernels/logit_extremes.py`) or the float64 reference (`reference.logit_extremes`),
after the checks.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core import backends
from ..core.backends import _C, pick_backend, resolve_compute
from ..core.checks import check_same_width, check_tensor
from . import reference
from .lens_stats import ROWS_PER_BLOCK, check_k


@dataclass
class LogitExtremes:
    """Per row [...] (the rows' leading shape), each with a trailing k."""

    top_ids: torch.Tensor       # int64, by descending logit; equal logits by ascending id
    top_logits: torch.Tensor    # float32
    bottom_ids: torch.Tensor    # int64, by ascending logit (most negative first); equal logits by ascending id
    bottom_logits: torch.Tensor  # float32


def logit_extremes(rows: torch.Tensor, weight: torch.Tensor, k: int = 10, *, backend: str | None = None,
                   compute: str = "auto", vocab_tile: int = 1024) -> LogitExtremes:
    """The k largest and k smallest z = rows · weightᵀ per row, exact over the full vocabulary.

    rows: [..., d] floating point (any leading shape, at least one row); weight: [vocab, d]
    float32 or bfloat16 (an unembedding); 1 <= k <= min(32, vocab). Tie rule as
    `reference`: equal logits by ascending id, in the top-k and in the bottom-k alike.

    compute: as `ops.lens_stats` — "fp32" multiplies float32 rows with W_U (bf16 weights
    widened exactly); "bf16" rounds the rows (and fp32 weights) to bf16, so the extremes are
    exact for the rounded operands (`reference.matmul_operands`); "auto" is "bf16" for bf16
    weights, else "fp32". The `torch` backend is the float64 reference. vocab_tile: the cpu
    backend's vocabulary tile (rounded to whole register panels there).
    """
    check_tensor("rows", rows, floating=True)
    if rows.dim() < 1:
        raise ValueError("rows: expected [..., d], got a 0-dimensional tensor")
    check_tensor("weight", weight, ndim=2, floating=True, finite=False)
    if weight.dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"weight: expected float32 or bfloat16, got {weight.dtype}")
    check_same_width("rows", rows, weight.shape[1], "weight's d_model")
    if rows.device != weight.device:
        raise ValueError(f"rows, weight: on different devices ({rows.device}, {weight.device})")
    k = check_k(k, weight.shape[0])
    compute = resolve_compute(compute, weight)
    if isinstance(vocab_tile, bool) or not isinstance(vocab_tile, int) or vocab_tile < 1:
        raise ValueError(f"vocab_tile: expected a positive int, got {vocab_tile!r}")
    backend = pick_backend(rows.device, backend)
    lead = rows.shape[:-1]
    flat = rows.reshape(-1, rows.shape[-1])
    if backend == "torch":
        out = reference.logit_extremes(flat, weight, k, compute=compute)
        out = out[0], out[1].float(), out[2], out[3].float()
    else:
        x = flat.float()
        w, round_rows = backends.fused_operands(weight, compute, backend)
        if round_rows:
            x = x.bfloat16().float()
        if backend == "cpu":
            out = _C.logit_extremes(x, w, k, ROWS_PER_BLOCK, vocab_tile)
        else:
            from ..kernels.logit_extremes import logit_extremes as triton_logit_extremes

            out = triton_logit_extremes(x, w, k, x_bf16=compute == "bf16")  # x rounded above: one bf16 dot
    top_ids, top_logits, bottom_ids, bottom_logits = (t.reshape(*lead, k) for t in out)
    return LogitExtremes(top_ids=top_ids, top_logits=top_logits, bottom_ids=bottom_ids, bottom_logits=bottom_logits)
