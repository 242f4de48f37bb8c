"""ops.lens_stats: every per-row logit-lens statistic of all sites in one sweep over vocabulary tiles.

Dispatch to the C++ sweep (`csrc/torch/lens_stats.cpp`), the Triton kernel
(`kernels/lens_stats.py`) or the float64 reference (`ops.reference`), after the checks.
"""
from __future__ import annotations

import numbers

import torch

from ..core import backends
from ..core.backends import _C, pick_backend, resolve_compute
from ..core.checks import IGNORE_INDEX, check_ids, check_same_width, check_tensor
from ..core.readout import FinalNorm, Unembed
from . import reference
from .stats import LensStats, prediction_depth

MAX_TOPK = 32  # the kernels keep a per-row top-k of at most this size
# Rows per tile GEMM on the cpu backend. A single site with 8-token blocks ran at 3x the bare GEMM
# (SmolLM2 head, 512 tokens: 0.45 s vs 0.15 s); 256 rows run at 0.13 s, under it.
ROWS_PER_BLOCK = 256


def check_k(k, vocab_size: int) -> int:
    """k of the top-k: an int (not a bool, not a float) in [1, min(MAX_TOPK, vocab_size)]."""
    max_k = min(MAX_TOPK, vocab_size)
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= max_k:
        raise ValueError(f"k: expected an int with 1 <= k <= {max_k}, got {k!r}")
    return int(k)


def normalized_rows(hidden: torch.Tensor, norm: FinalNorm, chunk: int = 256) -> torch.Tensor:
    """norm(hidden) in float32, a chunk of tokens at a time: the norm's temporaries stay
    small, so the op's memory is one float32 copy of the residuals."""
    out = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[1], chunk):
        out[:, start:start + chunk] = norm(hidden[:, start:start + chunk])
    return out


def lens_stats(hidden: torch.Tensor, norm: FinalNorm, unembed: Unembed, targets: torch.Tensor | None = None,
               k: int = 1, *, backend: str | None = None, compute: str = "auto", dtype: torch.dtype = torch.float32,
               token_block: int | None = None, vocab_tile: int = 1024,
               token_sets: torch.Tensor | None = None) -> LensStats:
    """Logit-lens statistics of residuals [sites, tokens, d_model]; the last site is the final layer.

    Exact over the full vocabulary (see `reference` for the definitions and the tie
    rule) without materialising a [tokens x vocab] logits tensor on the fused
    backends; `dtype` is the compute dtype of the `torch` backend only.

    compute: "fp32" multiplies the float32 normalised residual with W_U (bf16
    weights are widened exactly); "bf16" rounds the normalised residual to bf16
    and uses the CPU's bf16 dot instructions where they are measured faster than
    fp32 FMA (`_C.bf16_dot_speedup()`; elsewhere the fp32 sweep multiplies the rounded
    operands, with the same result), so the statistics are exact for the rounded residual
    (`reference.matmul_operands`; the logits move by at most 2^-9 · Σ|x̂ᵢ wᵢ|);
    "auto" is "bf16" for bf16 weights and "fp32" otherwise. Either way the
    accumulation and every statistic are float32 or better.

    token_sets: an integer tensor [vocab] of set ids (-1: in no set, at most 16 sets);
    `set_mass` [sites, tokens, sets] is then each set's probability Σ_{v∈S_j} p(v), summed in
    the same sweep over vocabulary tiles.
    """
    check_tensor("hidden", hidden, ndim=(2, 3), floating=True)
    if hidden.dim() == 2:  # a flat row batch is one site: its own final layer
        hidden = hidden[None]
    check_same_width("hidden", hidden, unembed.d_model, "the unembedding's d_model")
    sites, tokens, _ = hidden.shape
    k = check_k(k, unembed.vocab_size)
    if targets is not None:
        targets = check_ids("targets", targets, unembed.vocab_size, rows=tokens).reshape(tokens)
    compute = resolve_compute(compute, unembed.weight)
    token_sets, _ = reference.check_token_sets(token_sets, unembed.vocab_size)
    if token_block is None:  # ~256 rows (sites x tokens) per tile GEMM: 8 tokens of 31 sites, 256 of one site
        token_block = max(8, ROWS_PER_BLOCK // sites)
    if token_block < 1 or vocab_tile < 1:
        raise ValueError(f"token_block, vocab_tile: must be positive, got {token_block}, {vocab_tile}")
    backend = pick_backend(hidden.device, backend)
    if backend == "torch":
        return reference.lens_stats(hidden, norm, unembed, targets, k, dtype=dtype, compute=compute,
                                    token_sets=token_sets)
    xn = normalized_rows(hidden, norm)
    weight, round_rows = backends.fused_operands(unembed.weight, compute, backend)
    if round_rows:
        xn = xn.bfloat16().float()
    ids = torch.full((tokens,), -1, dtype=torch.long, device=hidden.device) if targets is None \
        else targets.masked_fill(targets == IGNORE_INDEX, -1)
    if backend == "cpu":
        out = _C.lens_stats(xn, weight, unembed.bias, float(unembed.softcap or 0.0), ids, k,
                            token_block, vocab_tile, None if token_sets is None else token_sets.to(torch.int8))
    else:
        from ..kernels.lens_stats import lens_stats as triton_lens_stats

        out = triton_lens_stats(xn, weight, unembed.bias, float(unembed.softcap or 0.0), ids, k,
                                token_sets=token_sets, x_bf16=compute == "bf16")  # xn rounded above: one bf16 dot
    lse, entropy, topk_ids, topk_logits, target_logit, target_rank, kl, final_rank, set_mass = out
    if targets is None:
        target_logit = target_logprob = target_rank = None
    else:
        target_logprob = target_logit - lse
    return LensStats(lse=lse, entropy=entropy, topk_ids=topk_ids, topk_logits=topk_logits, target_logit=target_logit,
                     target_logprob=target_logprob, target_rank=target_rank, kl_to_final=kl,
                     final_top1_rank=final_rank, prediction_depth=prediction_depth(topk_ids[..., 0]),
                     set_mass=None if token_sets is None else set_mass)
