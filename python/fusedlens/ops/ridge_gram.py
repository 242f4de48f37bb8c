"""ops.ridge_gram: add each site's fp32 batch Gram of [x − shift_x | y − shift_y | 1] into float64 totals.

The op behind RidgeAccumulator (probe/accumulator.py): C++ on CPU
(`csrc/torch/ridge_gram.cpp`, which sums the target and count columns in float64),
Triton on CUDA (`kernels/ridge_gram.py`), and the float64 `reference_gram`.
"""
from __future__ import annotations

import torch

from ..core.backends import _C, pick_backend
from ..core.checks import check_tensor

CPU_BLOCK = 128  # Gram block (best of 64..256 on 576-wide residuals); Triton autotunes its own
FP32_ROUNDOFF, FP64_ROUNDOFF = 2.0 ** -24, 2.0 ** -53


def default_rcond(roundoff: float) -> float:
    """Eigenvalues below this fraction of tr(Gc) are noise of the batch Grams' arithmetic."""
    return FP32_ROUNDOFF if roundoff >= FP32_ROUNDOFF else 2.0 ** -46


def _check_shapes(x, y, shift_x, shift_y, out):
    check_tensor("x", x, ndim=3, floating=True, finite=False)  # NaN/Inf: the backends' own check
    check_tensor("y", y, ndim=2, floating=True)
    S, N, d = x.shape
    m = y.shape[1]
    if y.shape[0] != N:
        raise ValueError(f"y: {y.shape[0]} rows, but x has {N} rows per site")
    for name, t, shape in (("shift_x", shift_x, (S, d)), ("shift_y", shift_y, (m,))):
        check_tensor(name, t, floating=True)
        if tuple(t.shape) != shape:
            raise ValueError(f"{name}: expected shape {shape}, got {tuple(t.shape)}")
    D = d + m + 1
    if out is not None and (out.dtype != torch.float64 or tuple(out.shape) != (S, D, D) or not out.is_contiguous()):
        raise ValueError(f"out: expected a contiguous float64 tensor of shape {(S, D, D)}, "
                         f"got {out.dtype} {tuple(out.shape)}")
    if len({t.device for t in (x, y, shift_x, shift_y) + ((out,) if out is not None else ())}) != 1:
        raise ValueError("x, y, shift_x, shift_y, out: on different devices")


def reference_gram(x: torch.Tensor, y: torch.Tensor, shift_x: torch.Tensor, shift_y: torch.Tensor) -> torch.Tensor:
    """The float64 truth: triu(W_sᵀW_s) for every site, [S, D, D]."""
    S, N, _ = x.shape
    v = (y.double() - shift_y.double()).expand(S, N, -1)
    w = torch.cat([x.double() - shift_x.double()[:, None, :], v, x.new_ones(S, N, 1, dtype=torch.float64)], -1)
    return torch.triu(w.mT @ w)


def ridge_gram(x: torch.Tensor, y: torch.Tensor, shift_x: torch.Tensor, shift_y: torch.Tensor,
               out: torch.Tensor | None = None, *, backend: str | None = None, block: int | None = None) -> torch.Tensor:
    """Add each site's batch Gram (upper triangle) into `out` [S, D, D] float64 and return it (zeros if None).

    x: [S, N, d] residuals of S sites (float32 or bfloat16 natively; other floats are
    cast to float32 by the fused backends); y: [N, m] targets; shift_x [S, d], shift_y
    [m]: the reference means subtracted before the product. NaN/Inf anywhere raises a
    ValueError and adds nothing.
    """
    _check_shapes(x, y, shift_x, shift_y, out)
    S, _, d = x.shape
    D = d + y.shape[1] + 1
    if out is None:
        out = torch.zeros(S, D, D, dtype=torch.float64, device=x.device)
    backend = pick_backend(x.device, backend)
    if backend != "cpu":
        check_tensor("x", x)
    if backend == "torch":
        out += reference_gram(x, y, shift_x, shift_y)
        return out
    if x.dtype not in (torch.float32, torch.bfloat16):
        x = x.float()
    if x.stride(2) != 1:
        x = x.contiguous()
    if backend == "cpu":
        # the C++ scan is ~15x faster than torch.isfinite(x).all() and adds nothing when it finds one
        bad = _C.ridge_gram(x, y.float(), shift_x.float(), shift_y.float(), out, block or CPU_BLOCK)
        if bad:
            raise ValueError(f"x: contains {bad} NaN/Inf value(s)")
    else:
        from ..kernels.ridge_gram import ridge_gram as triton_ridge_gram

        triton_ridge_gram(x, y, shift_x, shift_y, out, block=block)  # None: autotuned on a GPU
    return out
