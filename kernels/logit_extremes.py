"""The k largest and k smallest raw logits per row in Triton (docs/design.md, "What ops.logit_extremes computes").

    logit_extremes(x, w, k) -> (top_ids, top_logits, bottom_ids, bottom_logits)

Rows x [R, d] (for direct logit attribution: components' direct contributions, already
times the final norm's frozen gain) against w [V, d]: z = x · wᵀ, no bias, no softcap,
over the whole vocabulary without materialising [R × V]. One program per block of ROWS
rows loops over vocab tiles; each tile [ROWS × BLOCK_V] comes from kernels/tiles.py's
`tile_logits` (tl.dot, fp32 accumulation; HAS_BIAS and HAS_SOFTCAP off) and is folded
into two running sets of k keys per row by the same `topk_fold` as the lens kernel:
keys of z for the top-k and keys of -z for the bottom-k.

Keys (`logit_key`): (order-preserving int32 image of the fp32 value) << 32 | (2^31−1 − id), so
the larger key is the larger value and, among equal values, the lower id: the TIE RULE of
reference.py, for the bottom-k too (the top-k of -z: most negative first, equal logits by
ascending id). -0.0 is mapped to +0.0 first. At the end each set is emitted in descending
key order (`topk_store`), the bottom-k's values negated back.

Precision: as kernels/lens_stats.py (fp32 w: tl.dot input_precision, "tf32x3" by default;
bf16 w: x split into three bf16 parts, so x stays fp32-accurate against the bf16 weights).

Status and limits:
  * it has run only under TRITON_INTERPRET=1 on CPU (tests/test_ops_logit_extremes.py): never
    on a GPU, never timed;
  * the GPU defaults (64 rows, BLOCK_V 64, BLOCK_D 32, 8 warps) compile for sm_90a
    (triton.compile to a cubin offline, also in the tests: 228-246 registers and no spill at
    k = 32; 64 rows on 4 warps spilled); the native bf16 dot branch (BF16_DOT) runs only there;
  * inputs are not checked for NaN/Inf (fusedlens.ops does that).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .tiles import KEY_MIN, MAX_K, logit_key, tile_logits, topk_fold, topk_store


@triton.jit
def _extremes_kernel(x_ptr, w_ptr, top_id_out, top_val_out, bot_id_out, bot_val_out,
                     R, V, d, stride_x, stride_w,
                     K: tl.constexpr, KP: tl.constexpr, W_BF16: tl.constexpr, BF16_DOT: tl.constexpr,
                     PREC: tl.constexpr, ROWS: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
                     X_BF16: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < R
    row_off = rows.to(tl.int64) * stride_x
    kslot = tl.arange(0, KP)
    k_ok = kslot < K
    top = tl.full([ROWS, KP], KEY_MIN, tl.int64)
    bottom = tl.full([ROWS, KP], KEY_MIN, tl.int64)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < V
        z = tile_logits(x_ptr, row_off, row_ok, w_ptr, w_ptr, cols, col_ok, d, stride_w, 0.0,
                        False, False, W_BF16, BF16_DOT, PREC, ROWS, BLOCK_V, BLOCK_D, X_BF16)
        ok = col_ok[None, :] & row_ok[:, None]
        top = topk_fold(top, tl.where(ok, logit_key(z, cols[None, :]), KEY_MIN), kslot, k_ok, KP)
        bottom = topk_fold(bottom, tl.where(ok, logit_key(-z, cols[None, :]), KEY_MIN), kslot, k_ok, KP)
    out = rows.to(tl.int64)
    topk_store(top, top_id_out, top_val_out, out, row_ok, K, False)
    topk_store(bottom, bot_id_out, bot_val_out, out, row_ok, K, True)


def logit_extremes(x, w, k, *, block_v: int | None = None, block_d: int | None = None,
                   rows_per_program: int | None = None, input_precision: str = "tf32x3",
                   num_warps: int | None = None, x_bf16: bool = False):
    """Top-k and bottom-k of z = x · wᵀ per row: x [R, d] (float32), w [V, d] float32/bfloat16,
    1 <= k <= min(32, V). Returns (top_ids [R, k] i64, top_logits [R, k] f32, bottom_ids,
    bottom_logits): top by descending logit, bottom by ascending, equal logits by ascending id.
    Keyword-only knobs tune the tiling (powers of two); the defaults are small tiles for the
    interpreter on CPU, and on a GPU tiles that compile without spills (not timed). x_bf16: x holds
    bf16-rounded values (compute="bf16"): with bf16 w, one bf16 dot per tile instead of three.
    """
    if x.dim() != 2 or w.dim() != 2 or x.shape[-1] != w.shape[-1]:
        raise ValueError(f"x [R, d] and w [V, d] expected, got {tuple(x.shape)} and {tuple(w.shape)}")
    if w.dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"w: expected float32 or bfloat16, got {w.dtype}")
    R, d = x.shape
    V = w.shape[0]
    if R == 0 or d == 0 or V == 0:
        raise ValueError(f"empty input: x {tuple(x.shape)}, w {tuple(w.shape)}")
    if not 1 <= k <= min(MAX_K, V):
        raise ValueError(f"k: expected 1 <= k <= {min(MAX_K, V)}, got {k}")
    if w.device != x.device:
        raise ValueError("x, w: expected on the same device")
    interp = os.environ.get("TRITON_INTERPRET") == "1"
    if x.device.type != "cuda" and not interp:
        raise ValueError("triton logit_extremes: CPU tensors need TRITON_INTERPRET=1 (set before importing triton)")
    block_v = block_v or (128 if interp else 64)
    block_d = block_d or (64 if interp else 32)
    rows = rows_per_program or (16 if interp else 64)  # GPU: no spill at k = 32 with 8 warps
    for name, val in (("block_v", block_v), ("block_d", block_d), ("rows_per_program", rows)):
        if val < 1 or val & (val - 1):
            raise ValueError(f"{name}: expected a power of two, got {val}")
    if block_v < 16 or block_d < 16 or rows < 16:
        raise ValueError("block_v, block_d and rows_per_program must be >= 16 (tl.dot)")
    x = x.to(torch.float32).contiguous()
    w = w.contiguous()
    w_bf16 = w.dtype == torch.bfloat16
    out = [torch.empty(R, k, dtype=dt, device=x.device) for dt in (torch.int64, torch.float32) * 2]
    _extremes_kernel[(triton.cdiv(R, rows),)](
        x, w, *out, R, V, d, x.stride(0), w.stride(0), K=k, KP=triton.next_power_of_2(k), W_BF16=w_bf16,
        BF16_DOT=w_bf16 and not interp, PREC=input_precision, ROWS=rows, BLOCK_V=block_v, BLOCK_D=block_d,
        X_BF16=w_bf16 and bool(x_bf16),
        **({} if interp else {"num_warps": num_warps or 8}))
    return tuple(out)
