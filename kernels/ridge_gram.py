"""Streaming ridge accumulation in Triton: out[s] += upper triangle of W_sᵀW_s.

W_s = [x[s] − shift_x[s] | y − shift_y | 1] is never written out: each program
builds its two column panels of W on the fly (shift and augmentation fused into the
loads), multiplies them over the rows with fp32 accumulation (tl.dot, "ieee"
precision: TF32 would lose the R² tolerance), and adds the fp32 tile into the float64
totals. Only block pairs (i <= j) do work (the others return at once), so symmetry halves it.

Tested on CPU under TRITON_INTERPRET=1 (tests/test_ops_ridge_gram.py) and compiled for sm_90a
(tests/test_kernels_compile.py); not yet run on a GPU (bench/gpu_check.py is the prepared check).
On a GPU BLOCK and BLOCK_N are autotuned over TUNE_SPACE.
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from . import autotune, autotuning


@triton.jit
def _panel(x_ptr, y_ptr, sx_ptr, sy_ptr, s, rows, cols, N, d, m, stride_xs, stride_xn, stride_yn):
    """W_s[rows, cols] in fp32: shifted residuals, shifted targets, the ones column, zero padding."""
    live = rows[:, None] < N
    in_x = cols < d
    xv = tl.load(x_ptr + s * stride_xs + rows[:, None] * stride_xn + cols[None, :],
                 mask=live & in_x[None, :], other=0.0).to(tl.float32)
    sx = tl.load(sx_ptr + s * d + cols, mask=in_x, other=0.0)
    ycol = cols - d
    in_y = (ycol >= 0) & (ycol < m)
    yv = tl.load(y_ptr + rows[:, None] * stride_yn + ycol[None, :], mask=live & in_y[None, :], other=0.0)
    sy = tl.load(sy_ptr + ycol, mask=in_y, other=0.0)
    w = tl.where(in_x[None, :], xv - sx[None, :], 0.0)
    w += tl.where(in_y[None, :], yv - sy[None, :], 0.0)
    w += tl.where((cols == d + m)[None, :], 1.0, 0.0)
    return tl.where(live, w, 0.0)


@triton.jit
def _ridge_gram_kernel(x_ptr, y_ptr, sx_ptr, sy_ptr, out_ptr, N, d, m, stride_xs, stride_xn, stride_yn,
                       BLOCK: tl.constexpr, BLOCK_N: tl.constexpr):
    nb = tl.cdiv(d + m + 1, BLOCK)
    bi = tl.program_id(0) // nb
    bj = tl.program_id(0) % nb
    if bj >= bi:  # block pairs (i <= j) only: the programs below the diagonal return at once
        s = tl.program_id(1).to(tl.int64)  # s * stride_xs and s * D * D can pass 2^31
        ci = bi * BLOCK + tl.arange(0, BLOCK)
        cj = bj * BLOCK + tl.arange(0, BLOCK)
        acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
        for n0 in range(0, N, BLOCK_N):
            rows = n0 + tl.arange(0, BLOCK_N)
            a = _panel(x_ptr, y_ptr, sx_ptr, sy_ptr, s, rows, ci, N, d, m, stride_xs, stride_xn, stride_yn)
            b = _panel(x_ptr, y_ptr, sx_ptr, sy_ptr, s, rows, cj, N, d, m, stride_xs, stride_xn, stride_yn)
            acc = tl.dot(tl.trans(a), b, acc, input_precision="ieee")
        D = d + m + 1
        keep = (ci[:, None] < D) & (cj[None, :] < D) & (cj[None, :] >= ci[:, None])
        ptrs = out_ptr + s * D * D + ci[:, None] * D + cj[None, :]
        old = tl.load(ptrs, mask=keep, other=0.0)
        tl.store(ptrs, old + acc.to(tl.float64), mask=keep)


# The GPU search space (BLOCK, BLOCK_N, warps), small on purpose: each compiles for sm_90a without
# stack (ptxas, offline: tests/test_kernels_compile.py); the old default (64, 32) on 4 warps spilled
# 328 bytes and 128-wide blocks spill ~500. The kernel adds into `out`, so the autotuner restores it
# after each of its benchmark runs.
TUNE_SPACE = ((64, 32, 8), (64, 64, 8), (32, 32, 4))


def ridge_gram(x: torch.Tensor, y: torch.Tensor, shift_x: torch.Tensor, shift_y: torch.Tensor, out: torch.Tensor,
               block: int | None = None, block_n: int | None = None) -> None:
    """x [S, N, d] float32/bf16; y [N, m], shift_x [S, d], shift_y [m] float32; out [S, D, D] float64 contiguous,
    D = d + m + 1 (all checked by the caller). Adds in place. Without block / block_n a GPU autotunes
    them over TUNE_SPACE; the interpreter takes 64 / 32."""
    S, N, d = x.shape
    m = y.shape[1]
    D = d + m + 1
    if x.stride(2) != 1:
        x = x.contiguous()
    y, shift_x, shift_y = y.float().contiguous(), shift_x.float().contiguous(), shift_y.float().contiguous()
    args = (x, y, shift_x, shift_y, out, N, d, m, x.stride(0), x.stride(1), y.stride(0))
    if block is None and block_n is None and autotuning() and os.environ.get("TRITON_INTERPRET") != "1":
        _tuned_kernel()[lambda meta: (triton.cdiv(D, meta["BLOCK"]) ** 2, S)](*args)
    else:
        block, block_n = block or TUNE_SPACE[0][0], block_n or TUNE_SPACE[0][1]
        warps = {} if os.environ.get("TRITON_INTERPRET") == "1" else {"num_warps": TUNE_SPACE[0][2]}
        _ridge_gram_kernel[(triton.cdiv(D, block) ** 2, S)](*args, BLOCK=block, BLOCK_N=block_n, **warps)


@functools.lru_cache(maxsize=None)
def _tuned_kernel():
    configs = [triton.Config({"BLOCK": b, "BLOCK_N": n}, num_warps=w) for b, n, w in TUNE_SPACE]
    return autotune(configs, ["d", "m"], restore_value=["out_ptr"])(_ridge_gram_kernel)
