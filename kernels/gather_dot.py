"""Row-wise gather-dot in Triton: out[r] = x[r] · w[ids[r]] + bias[ids[r]] (NaN where ids[r] < 0)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _gather_dot_kernel(x_ptr, w_ptr, b_ptr, ids_ptr, out_ptr, d, stride_x, stride_w,
                       HAS_BIAS: tl.constexpr, BLOCK_D: tl.constexpr):
    row = tl.program_id(0)
    tid = tl.load(ids_ptr + row)
    safe = tl.maximum(tid, 0)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for start in range(0, d, BLOCK_D):
        cols = start + tl.arange(0, BLOCK_D)
        keep = cols < d
        x = tl.load(x_ptr + row * stride_x + cols, mask=keep, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + safe * stride_w + cols, mask=keep, other=0.0).to(tl.float32)
        acc += x * w
    total = tl.sum(acc, axis=0)
    if HAS_BIAS:
        total += tl.load(b_ptr + safe).to(tl.float32)
    total = tl.where(tid < 0, float("nan"), total)
    tl.store(out_ptr + row, total)


def gather_dot(x: torch.Tensor, w: torch.Tensor, ids: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [rows, d] float32, w [vocab, d] float32/bf16, ids [rows] int64 (checked by the caller)."""
    rows, d = x.shape
    x, w, ids = x.contiguous(), w.contiguous(), ids.contiguous()
    out = torch.empty(rows, dtype=torch.float32, device=x.device)
    block = min(1024, triton.next_power_of_2(d))
    _gather_dot_kernel[(rows,)](x, w, bias if bias is not None else w, ids, out, d, x.stride(0), w.stride(0),
                                HAS_BIAS=bias is not None, BLOCK_D=block)
    return out
