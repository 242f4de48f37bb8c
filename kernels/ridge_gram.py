"""Streaming ridge accumulation in Triton: out[s] += upper triangle of W_sᵀW_s.

W_s = [x[s] − shift_x[s] | y − shift_y | 1] is never written out: each program
builds its two column panels of W on the fly (shift and augmentation fused into the
loads), multiplies them over the rows with fp32 accumulation (tl.dot, "ieee"
precision: TF32 would lose the R² tolerance), and adds the fp32 tile into the float64
totals. Only block pairs (i <= j) are launched, so symmetry halves the work.

Tested on CPU under TRITON_INTERPRET=1 (tests/test_ridge_kernels.py); not run on a GPU
here.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


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
def _ridge_gram_kernel(x_ptr, y_ptr, sx_ptr, sy_ptr, out_ptr, pairs_ptr, N, d, m, stride_xs, stride_xn, stride_yn,
                       BLOCK: tl.constexpr, BLOCK_N: tl.constexpr):
    pair = tl.program_id(0)
    s = tl.program_id(1).to(tl.int64)  # s * stride_xs and s * D * D can pass 2^31
    ci = tl.load(pairs_ptr + 2 * pair) * BLOCK + tl.arange(0, BLOCK)
    cj = tl.load(pairs_ptr + 2 * pair + 1) * BLOCK + tl.arange(0, BLOCK)
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


def ridge_gram(x: torch.Tensor, y: torch.Tensor, shift_x: torch.Tensor, shift_y: torch.Tensor, out: torch.Tensor,
               block: int = 64, block_n: int = 32) -> None:
    """x [S, N, d] float32/bf16; y [N, m], shift_x [S, d], shift_y [m] float32; out [S, D, D] float64 contiguous,
    D = d + m + 1 (all checked by the caller). Adds in place."""
    S, N, d = x.shape
    m = y.shape[1]
    D = d + m + 1
    if x.stride(2) != 1:
        x = x.contiguous()
    y, shift_x, shift_y = y.float().contiguous(), shift_x.float().contiguous(), shift_y.float().contiguous()
    nb = triton.cdiv(D, block)
    pairs = torch.tensor([(i, j) for i in range(nb) for j in range(i, nb)], dtype=torch.int32, device=x.device)
    _ridge_gram_kernel[(pairs.shape[0], S)](x, y, shift_x, shift_y, out, pairs, N, d, m, x.stride(0), x.stride(1),
                                            y.stride(0), BLOCK=block, BLOCK_N=block_n)
