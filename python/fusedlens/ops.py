"""Tensor-level ops: the entry other tools call. Check inputs, pick a backend, call the kernel.

backend=None picks the fastest available for the tensors' device: `triton` on
CUDA, `cpu` (the C++ extension) on CPU, and `torch` (the reference) otherwise.
"""
from __future__ import annotations

import torch

from . import reference
from ._checks import IGNORE_INDEX, check_ids, check_same_width, check_tensor

BACKENDS = ("torch", "cpu", "triton")

try:
    from . import _C
except ImportError:  # built without the extension
    _C = None


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    from . import kernels

    out = ["torch"]
    if _C is not None and str(device) == "cpu":
        out.append("cpu")
    if kernels.runs_on(device):
        out.append("triton")
    return out


def pick_backend(device, backend: str | None) -> str:
    if backend is None:
        avail = available_backends(device)
        return "triton" if str(device).startswith("cuda") and "triton" in avail else ("cpu" if "cpu" in avail else "torch")
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if backend not in available_backends(device):
        raise ValueError(f"backend: {backend!r} is not available for {device} tensors here "
                         f"(available: {available_backends(device)})")
    return backend


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
        from .kernels.gather_dot import gather_dot

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


def lens_stats(hidden: torch.Tensor, norm, unembed, targets: torch.Tensor | None = None, k: int = 1, *,
               backend: str | None = None, dtype: torch.dtype = torch.float32) -> reference.LensStats:
    """Logit-lens statistics of residuals [sites, tokens, d_model]; the last site is the final layer.

    Only the `torch` backend (the reference, in `dtype`) exists so far; the fused
    kernels plug in here.
    """
    if backend not in (None, "torch"):
        raise ValueError(f"backend: {backend!r} has no lens_stats kernel yet (available: ['torch'])")
    return reference.lens_stats(hidden, norm, unembed, targets, k, dtype=dtype)
