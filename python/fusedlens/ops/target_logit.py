"""ops.target_logit: each row's logit for its own target id, a gather-dot (no vocabulary sweep)."""
from __future__ import annotations

import torch

from ..core.backends import _C, pick_backend
from ..core.checks import IGNORE_INDEX, check_ids, check_same_width, check_tensor


def target_logit(x: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, bias: torch.Tensor | None = None, *,
                 softcap: float | None = None, backend: str | None = None) -> torch.Tensor:
    """Each row's logit for its own target: softcap(x[r] · weight[ids[r]] + bias[ids[r]]) in float32.

    x: [rows, d] normalised residuals; weight: [vocab, d] unembedding (float32 or
    bfloat16); ids: [rows] target ids, IGNORE_INDEX (-100) for none (gives NaN).
    """
    check_tensor("x", x, ndim=2, floating=True)
    check_tensor("weight", weight, ndim=2, floating=True, finite=False)
    check_same_width("x", x, weight.shape[1], "weight's d_model")
    ids = check_ids("ids", ids, weight.shape[0], rows=x.shape[0]).reshape(-1)
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias: expected shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    if x.device != weight.device or x.device != ids.device:
        raise ValueError(f"x, weight, ids: on different devices ({x.device}, {weight.device}, {ids.device})")
    backend = pick_backend(x.device, backend)
    if weight.dtype not in (torch.float32, torch.bfloat16) and backend != "torch":
        weight = weight.float()
    if bias is not None:
        bias = bias.to(weight.dtype)
    x32 = x.float()
    if backend == "cpu":
        out = _C.gather_dot(x32, weight, ids, bias)
    elif backend == "triton":
        from ..kernels.gather_dot import gather_dot

        out = gather_dot(x32, weight, ids, bias)
    else:
        safe = ids.clamp_min(0)
        out = (x32.double() * weight[safe].double()).sum(-1)
        if bias is not None:
            out = out + bias[safe].double()
        out = out.float().masked_fill(ids == IGNORE_INDEX, float("nan"))
    if softcap is not None:
        out = softcap * torch.tanh(out / softcap)
    return out
