"""Fused linear-KL loss of the tuned lens in Triton (see fusedlens.lens_kl for the maths).

    lens_kl(xn, xf, w, bias, softcap, with_grad) -> (kl [L,T], lse [L,T], lse_final [T], grad [L,T,d] | empty)

One program per (block of BLOCK_T tokens, site group). Its rows are BLOCK_T tokens ×
SITES_P slots, the last slot of every token being the final layer (as in
lens_stats.py), so every W tile [BLOCK_V, d] is read once per program for all sites
of its tokens and the final row's logits of the same tile are at hand. The tile
logits come from tiles.py's `tile_logits` (the same dot, bias and soft-cap as lens_stats.py).

Per tile and row: online max m, s = Σ exp(z − m), w = Σ exp(z_f − m_f)(z_f − z)
(rescaled with the final row's max). With WITH_GRAD, per-row accumulators
a = Σ exp(z − m) c' W (and, with a soft-cap, b = Σ exp(z_f − m_f) c' W) live in a
global scratch [rows, d] owned by the program: each tile multiplies them by the
rescale factor of the row's max and adds the [ROWS, BLOCK_V] × [BLOCK_V, BLOCK_D]
dots chunk by chunk over d. At the end ∂KL/∂x = a / s − b / s_f, where without a cap
b is the final slot's own a.

Status: tested on CPU under TRITON_INTERPRET=1 (tests/test_ops_lens_kl.py); compiles for
sm_90a (tests/test_kernels_compile.py), not yet run on a GPU (bench/gpu_check.py is the prepared
check). On a GPU the tiles are autotuned over TUNE_SPACE; with bf16 weights and rows rounded
to bf16 (x_bf16, compute="bf16") both GEMMs take one bf16 dot per tile.
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from . import autotune, autotuning
from .tiles import NEG, tile_logits

ROWS = 64  # rows per program on a GPU (tokens x site slots)
# The GPU search space (rows, BLOCK_V, BLOCK_D, warps), small on purpose: ptxas (sm_90a, offline:
# tests/test_kernels_compile.py) fits each in 255 registers with at most 16 bytes of stack; the old
# default (64 x 32 on 4 warps) spilled 208-512 bytes, and 128-wide tiles or BLOCK_D 64 spill 400+.
# The accumulators start at the first tile (no zeroed scratch), so the autotuner's trial runs leave
# nothing behind.
TUNE_SPACE = ((ROWS, 64, 32, 8), (ROWS, 32, 32, 8), (ROWS, 64, 16, 8))


@triton.jit
def _final_slot(t, BLOCK_T: tl.constexpr, SITES_P: tl.constexpr):
    """[ROWS] row values → [BLOCK_T] values of each token's final slot."""
    slot = tl.arange(0, SITES_P)[None, :]
    return tl.sum(tl.where(slot == SITES_P - 1, tl.reshape(t, [BLOCK_T, SITES_P]), 0.0), axis=1)


@triton.jit
def _final_slot_2d(t, BLOCK_T: tl.constexpr, SITES_P: tl.constexpr, COLS: tl.constexpr):
    """[ROWS, COLS] → the final slot's row broadcast back to every row of its token."""
    slot = tl.arange(0, SITES_P)[None, :, None]
    f = tl.sum(tl.where(slot == SITES_P - 1, tl.reshape(t, [BLOCK_T, SITES_P, COLS]), 0.0), axis=1)
    return tl.reshape(tl.broadcast_to(f[:, None, :], [BLOCK_T, SITES_P, COLS]), [BLOCK_T * SITES_P, COLS])


@triton.jit
def _per_row(t, BLOCK_T: tl.constexpr, SITES_P: tl.constexpr):
    """[BLOCK_T] → [ROWS] (each token's value on all its slots)."""
    return tl.reshape(tl.broadcast_to(t[:, None], [BLOCK_T, SITES_P]), [BLOCK_T * SITES_P])


@triton.jit
def _grad_dot(e, wk, PREC: tl.constexpr, ROUND: tl.constexpr, BF16_DOT: tl.constexpr):
    """e [ROWS, BLOCK_V] (softmax weights) · wk [BLOCK_V, BLOCK_D] in fp32. ROUND (compute="bf16") on a
    GPU with bf16 weights: e rounded to bf16 and one bf16 dot per tile (bench/gpu_check.py checks it
    against the stated bound). Elsewhere e stays fp32: rounding it without the bf16 dot's fp32
    accumulation broke that bound under the interpreter."""
    if ROUND and BF16_DOT:
        return tl.dot(e.to(tl.bfloat16), wk.to(tl.bfloat16))
    return tl.dot(e, wk.to(tl.float32), input_precision=PREC)


@triton.jit
def _lens_kl_kernel(x_ptr, w_ptr, b_ptr, kl_out, lse_out, lsef_out, acc_ptr, accb_ptr, grad_out,
                    L, T, V, d, stride_xs, stride_xt, stride_w, softcap,
                    WITH_GRAD: tl.constexpr, BLOCK_T: tl.constexpr, SITES_P: tl.constexpr,
                    HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, W_BF16: tl.constexpr,
                    BF16_DOT: tl.constexpr, PREC: tl.constexpr, X_BF16: tl.constexpr,
                    BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
    ROWS: tl.constexpr = BLOCK_T * SITES_P
    pid_t = tl.program_id(0)
    group = tl.program_id(1)
    r = tl.arange(0, ROWS)
    slot = r % SITES_P
    tok = pid_t * BLOCK_T + r // SITES_P
    tok_ok = tok < T
    is_final = slot == SITES_P - 1
    site = tl.where(is_final, L, group * (SITES_P - 1) + slot)  # x holds the final rows as site L
    row_ok = tok_ok & (is_final | (site < L))
    row_off = site.to(tl.int64) * stride_xs + tok.to(tl.int64) * stride_xt
    scratch = (pid_t * tl.num_programs(1) + group).to(tl.int64) * ROWS * d + r.to(tl.int64)[:, None] * d

    m = tl.full([ROWS], NEG, tl.float32)
    s = tl.zeros([ROWS], dtype=tl.float32)
    wsum = tl.zeros([ROWS], dtype=tl.float32)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < V
        z = tl.where(col_ok[None, :], tile_logits(x_ptr, row_off, row_ok, w_ptr, b_ptr, cols, col_ok, d, stride_w,
                                                  softcap, HAS_BIAS, HAS_SOFTCAP, W_BF16, BF16_DOT, PREC, ROWS,
                                                  BLOCK_V, BLOCK_D, X_BF16), NEG)
        m_new = tl.maximum(m, tl.max(z, axis=1))
        alpha = tl.exp(m - m_new)
        e = tl.exp(z - m_new[:, None])
        s = alpha * s + tl.sum(e, axis=1)
        m = m_new
        alpha_f = _per_row(_final_slot(alpha, BLOCK_T, SITES_P), BLOCK_T, SITES_P)
        e_f = _final_slot_2d(e, BLOCK_T, SITES_P, BLOCK_V)
        z_f = _final_slot_2d(tl.where(col_ok[None, :], z, 0.0), BLOCK_T, SITES_P, BLOCK_V)
        wsum = wsum * alpha_f + tl.sum(e_f * (z_f - tl.where(col_ok[None, :], z, 0.0)), axis=1)
        if WITH_GRAD:
            e_a = e
            if HAS_SOFTCAP:
                t = tl.where(col_ok[None, :], z, 0.0) / softcap
                slope = 1.0 - t * t
                e_a = e * slope
                e_b = e_f * slope
            for k0 in range(0, d, BLOCK_D):
                ks = k0 + tl.arange(0, BLOCK_D)
                k_ok = ks < d
                wk = tl.load(w_ptr + cols.to(tl.int64)[:, None] * stride_w + ks[None, :],
                             mask=col_ok[:, None] & k_ok[None, :], other=0.0)
                where = scratch + ks[None, :]
                a = tl.load(acc_ptr + where, mask=k_ok[None, :] & (v0 > 0), other=0.0)  # tile 0 starts it
                a = a * alpha[:, None] + _grad_dot(e_a, wk, PREC, W_BF16 and X_BF16, BF16_DOT)
                tl.store(acc_ptr + where, a, mask=k_ok[None, :])
                if HAS_SOFTCAP:
                    b = tl.load(accb_ptr + where, mask=k_ok[None, :] & (v0 > 0), other=0.0)
                    b = b * alpha_f[:, None] + _grad_dot(e_b, wk, PREC, W_BF16 and X_BF16, BF16_DOT)
                    tl.store(accb_ptr + where, b, mask=k_ok[None, :])

    lse = m + tl.log(s)
    s_f = _per_row(_final_slot(s, BLOCK_T, SITES_P), BLOCK_T, SITES_P)
    lse_f = _per_row(_final_slot(lse, BLOCK_T, SITES_P), BLOCK_T, SITES_P)
    kl = wsum / s_f - lse_f + lse
    lens_row = row_ok & ~is_final
    out = site.to(tl.int64) * T + tok
    tl.store(kl_out + out, kl, mask=lens_row)
    tl.store(lse_out + out, lse, mask=lens_row)
    tl.store(lsef_out + tok, lse, mask=tok_ok & is_final & ((slot * 0 + group) == 0))  # group 0 only
    if WITH_GRAD:
        for k0 in range(0, d, BLOCK_D):
            ks = k0 + tl.arange(0, BLOCK_D)
            k_ok = ks < d
            a = tl.load(acc_ptr + scratch + ks[None, :], mask=k_ok[None, :], other=0.0)
            if HAS_SOFTCAP:
                b = tl.load(accb_ptr + scratch + ks[None, :], mask=k_ok[None, :], other=0.0)
            else:
                b = _final_slot_2d(a, BLOCK_T, SITES_P, BLOCK_D)
            g = a / s[:, None] - b / s_f[:, None]
            tl.store(grad_out + out[:, None] * d + ks[None, :], g, mask=lens_row[:, None] & k_ok[None, :])


def lens_kl(xn, xf, w, bias, softcap, with_grad, *, block_v: int | None = None, block_d: int | None = None,
            rows_per_program: int | None = None, max_sites_per_program: int = 32,
            input_precision: str = "tf32x3", num_warps: int | None = None, x_bf16: bool = False):
    """xn [L, T, d] and xf [T, d] float32 (normalised), w [V, d] float32/bfloat16, bias [V] or None,
    softcap > 0 or 0.0; inputs checked by fusedlens.lens_kl. Tile knobs are powers of two; without
    them a GPU autotunes BLOCK_V, BLOCK_D and warps over TUNE_SPACE. x_bf16: xn and xf hold
    bf16-rounded values (compute="bf16"): with bf16 w, both GEMMs take one bf16 dot per tile."""
    L, T, d = xn.shape
    V = w.shape[0]
    dev = xn.device
    interp = os.environ.get("TRITON_INTERPRET") == "1"
    if dev.type != "cuda" and not interp:
        raise ValueError("triton lens_kl: CPU tensors need TRITON_INTERPRET=1 (set before importing triton)")
    x = torch.cat([xn.float(), xf.float()[None]], 0).contiguous()  # site L = the final rows
    w = w.contiguous()
    tune = not interp and autotuning() and block_v is None and block_d is None and num_warps is None
    rows = rows_per_program or (32 if interp else ROWS)
    sites_p = min(triton.next_power_of_2(L + 1), max_sites_per_program)
    groups = triton.cdiv(L, sites_p - 1)
    block_t = min(max(1, rows // sites_p), triton.next_power_of_2(T))
    block_t = max(block_t, triton.cdiv(16, sites_p))  # tl.dot wants >= 16 rows
    grid = (triton.cdiv(T, block_t), groups)
    f32 = dict(dtype=torch.float32, device=dev)
    kl, lse, lse_f = torch.empty(L, T, **f32), torch.empty(L, T, **f32), torch.empty(T, **f32)
    softcap = float(softcap or 0.0)
    n_scratch = grid[0] * grid[1] * block_t * sites_p * d if with_grad else 1
    acc = torch.empty(n_scratch, **f32)  # per-program gradient accumulators, started by the first tile
    acc_b = torch.empty(n_scratch, **f32) if with_grad and softcap > 0 else acc
    grad = torch.empty(L, T, d, **f32) if with_grad else torch.empty(0, **f32)
    w_bf16 = w.dtype == torch.bfloat16
    args = (x, w, bias if bias is not None else w, kl, lse, lse_f, acc, acc_b, grad,
            L, T, V, d, x.stride(0), x.stride(1), w.stride(0), softcap)
    fixed = dict(WITH_GRAD=bool(with_grad), BLOCK_T=block_t, SITES_P=sites_p, HAS_BIAS=bias is not None,
                 HAS_SOFTCAP=softcap > 0, W_BF16=w_bf16, BF16_DOT=w_bf16 and not interp, PREC=input_precision,
                 X_BF16=w_bf16 and bool(x_bf16))
    if tune:
        _tuned_kernel()[grid](*args, **fixed)
    else:
        _, block_v0, block_d0, warps0 = TUNE_SPACE[0]
        _lens_kl_kernel[grid](*args, BLOCK_V=block_v or 64, BLOCK_D=block_d or (32 if interp else block_d0),
                              **fixed, **({} if interp else {"num_warps": num_warps or warps0}))
    return kl, lse, lse_f, grad


@functools.lru_cache(maxsize=None)
def _tuned_kernel():
    """The kernel autotuned over TUNE_SPACE (BLOCK_V, BLOCK_D, warps; the row layout stays the host's,
    since the gradient scratch is sized by it), keyed on what changes the best tiles."""
    configs = [triton.Config({"BLOCK_V": bv, "BLOCK_D": bd}, num_warps=w) for _, bv, bd, w in TUNE_SPACE]
    return autotune(configs, ["d", "SITES_P", "BLOCK_T", "WITH_GRAD", "W_BF16", "X_BF16", "HAS_SOFTCAP"])(_lens_kl_kernel)
