"""The kernel backends: which exist for a device, which one to run, and the GEMM precision rule.

backend=None picks the fastest available for the tensors' device: `triton` on
CUDA, `cpu` (the C++ extension) on CPU, and `torch` (the float64 reference) otherwise.
"""
from __future__ import annotations

import torch

BACKENDS = ("torch", "cpu", "triton")
COMPUTE_MODES = ("fp32", "bf16")  # the GEMM operands: float32, or rounded to bf16
BACKEND_HELP = "kernel backend: torch (float64 reference), cpu (C++) or triton (CUDA); default: the fastest here"

try:
    from .. import _C
except ImportError:  # built without the extension
    _C = None


def _check_forced_isa() -> None:
    """FUSEDLENS_ISA must name a level this CPU has: a typo or a faster level than the CPU offers
    is a clear error at import, not a silent fallback."""
    import os

    forced = os.environ.get("FUSEDLENS_ISA", "")
    if _C is None or not forced:
        return
    levels = ("generic", "avx2", "avx512", "avx512bf16")
    if forced not in levels:
        raise ImportError(f"FUSEDLENS_ISA={forced!r}: expected one of {', '.join(levels)}")
    if levels.index(forced) > levels.index(_C.cpu_isa()):
        raise ImportError(f"FUSEDLENS_ISA={forced}: this CPU supports at most {_C.cpu_isa()}")


_check_forced_isa()


def bf16_dot_on_cpu() -> bool:
    """Whether the C++ kernels multiply bf16 operands with the CPU's bf16 dot instructions (AVX512-BF16):
    where they exist and were measured faster than fp32 FMA, or FUSEDLENS_ISA=avx512bf16 forces them."""
    return _C is not None and bool(_C.has_bf16_dot())


def resolve_compute(compute: str, weight: torch.Tensor, backend: str | None = None, *, training: bool = False) -> str:
    """The one rule for compute='auto': 'bf16' for bf16 weights (as the model's own head multiplies);
    when `training`, also where bf16 operands are faster (the cpu backend on a CPU with bf16 dot);
    else 'fp32'. Checks the name."""
    if compute == "auto":
        fast_bf16 = training and pick_backend(weight.device, backend) == "cpu" and bf16_dot_on_cpu()
        compute = "bf16" if weight.dtype == torch.bfloat16 or fast_bf16 else "fp32"
    if compute not in COMPUTE_MODES:
        raise ValueError(f"compute: expected 'auto' or one of {COMPUTE_MODES}, got {compute!r}")
    return compute


def fused_operands(weight: torch.Tensor, compute: str, backend: str, *,
                   as_given: bool = False) -> tuple[torch.Tensor, bool]:
    """(weight, round_rows) for a fused sweep (backend "cpu" or "triton") under a resolved `compute`.

    compute="bf16": the C++ bf16-dot sweep (a CPU with bf16 dot) takes bf16 weights and rounds the
    rows itself. Elsewhere (Triton, or a CPU without bf16 dot) round_rows is True: the caller rounds
    the rows to bf16, and on the CPU the fp32 sweep multiplies the rounded operands (their products
    are exact in fp32: the same numbers at the fp32 speed). compute="fp32": float32 weights.
    as_given: float32 and bfloat16 weights go unchanged to the bf16-dot sweep (it rounds float32
    tiles as it packs them) and, with compute="fp32", to Triton (ops.lens_kl)."""
    bf16_kernel = compute == "bf16" and backend == "cpu" and bf16_dot_on_cpu()
    round_rows = compute == "bf16" and not bf16_kernel
    native = weight.dtype in (torch.float32, torch.bfloat16)
    if compute == "bf16":
        if not (as_given and bf16_kernel and native):
            weight = weight.bfloat16()
        if round_rows and backend == "cpu":
            weight = weight.float()
    elif not (as_given and backend == "triton" and native):
        weight = weight.float()
    return weight, round_rows


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    from .. import kernels

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
