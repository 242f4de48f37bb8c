"""Tensor-level ops: the entry other tools call. Check inputs, pick a backend, call the kernel.

backend=None picks the fastest available for the tensors' device: `triton` on
CUDA, `cpu` (the C++ extension) on CPU, and `torch` (the reference) otherwise.
"""
from __future__ import annotations

import torch

from . import reference
from ._checks import IGNORE_INDEX, check_ids, check_same_width, check_tensor
from .readout import FinalNorm, Unembed
from .reference import LensStats

MAX_TOPK = 32  # the kernels keep a per-row top-k of at most this size

BACKENDS = ("torch", "cpu", "triton")

try:
    from . import _C
except ImportError:  # built without the extension
    _C = None


def bf16_dot_on_cpu() -> bool:
    """Whether the C++ kernels multiply bf16 operands with the CPU's bf16 dot instructions (AVX512-BF16)."""
    return _C is not None and bool(_C.has_bf16_dot())


def resolve_compute(compute: str, weight: torch.Tensor) -> str:
    """'auto' -> 'bf16' for bf16 weights (as the model's own head multiplies), else 'fp32'; checks the name."""
    if compute == "auto":
        compute = "bf16" if weight.dtype == torch.bfloat16 else "fp32"
    if compute not in reference.COMPUTE_MODES:
        raise ValueError(f"compute: expected 'auto' or one of {reference.COMPUTE_MODES}, got {compute!r}")
    return compute


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


def normalized_rows(hidden: torch.Tensor, norm: FinalNorm, chunk: int = 256) -> torch.Tensor:
    """norm(hidden) in float32, a chunk of tokens at a time: the norm's temporaries stay
    small, so the op's memory is one float32 copy of the residuals."""
    out = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[1], chunk):
        out[:, start:start + chunk] = norm(hidden[:, start:start + chunk])
    return out


def lens_stats(hidden: torch.Tensor, norm: FinalNorm, unembed: Unembed, targets: torch.Tensor | None = None,
               k: int = 1, *, backend: str | None = None, compute: str = "auto", dtype: torch.dtype = torch.float32,
               token_block: int = 8, vocab_tile: int = 1024) -> LensStats:
    """Logit-lens statistics of residuals [sites, tokens, d_model]; the last site is the final layer.

    Exact over the full vocabulary (see `reference` for the definitions and the tie
    rule) without materialising a [tokens x vocab] logits tensor on the fused
    backends; `dtype` is the compute dtype of the `torch` backend only.

    compute: "fp32" multiplies the float32 normalised residual with W_U (bf16
    weights are widened exactly); "bf16" rounds the normalised residual to bf16
    and uses the CPU's bf16 dot instructions where present (about twice the
    multiply-adds per cycle; elsewhere the fp32 sweep multiplies the rounded
    operands, with the same result), so the statistics are exact for the rounded residual
    (`reference.matmul_operands`; the logits move by at most 2^-9 · Σ|x̂ᵢ wᵢ|);
    "auto" is "bf16" for bf16 weights and "fp32" otherwise. Either way the
    accumulation and every statistic are float32 or better.
    """
    check_tensor("hidden", hidden, ndim=(2, 3), floating=True)
    if hidden.dim() == 2:  # a flat row batch is one site: its own final layer
        hidden = hidden[None]
    check_same_width("hidden", hidden, unembed.d_model, "the unembedding's d_model")
    sites, tokens, _ = hidden.shape
    if not 1 <= k <= min(MAX_TOPK, unembed.vocab_size):
        raise ValueError(f"k: expected 1 <= k <= {min(MAX_TOPK, unembed.vocab_size)}, got {k}")
    if targets is not None:
        targets = check_ids("targets", targets, unembed.vocab_size, rows=tokens).reshape(tokens)
    compute = resolve_compute(compute, unembed.weight)
    if token_block < 1 or vocab_tile < 1:
        raise ValueError(f"token_block, vocab_tile: must be positive, got {token_block}, {vocab_tile}")
    backend = pick_backend(hidden.device, backend)
    if backend == "torch":
        return reference.lens_stats(hidden, norm, unembed, targets, k, dtype=dtype, compute=compute)
    xn = normalized_rows(hidden, norm)
    # The C++ bf16-dot sweep rounds xn itself when it gets bf16 weights. Elsewhere (Triton, or a CPU
    # without bf16 dot) xn is rounded here and, on the CPU, the fp32 sweep multiplies the rounded
    # operands: their products are exact, so the numbers are the same, at the fp32 speed.
    weight = unembed.weight.bfloat16() if compute == "bf16" else unembed.weight.float()
    if compute == "bf16" and (backend == "triton" or not bf16_dot_on_cpu()):
        xn = xn.bfloat16().float()
        if backend == "cpu":
            weight = weight.float()
    ids = torch.full((tokens,), -1, dtype=torch.long, device=hidden.device) if targets is None \
        else targets.masked_fill(targets == IGNORE_INDEX, -1)
    if backend == "cpu":
        out = _C.lens_stats(xn, weight, unembed.bias, float(unembed.softcap or 0.0), ids, k,
                            token_block, vocab_tile)
    else:
        from .kernels.lens_stats import lens_stats as triton_lens_stats

        out = triton_lens_stats(xn, weight, unembed.bias, float(unembed.softcap or 0.0), ids, k)
    lse, entropy, topk_ids, topk_logits, target_logit, target_rank, kl, final_rank = out
    if targets is None:
        target_logit = target_logprob = target_rank = None
    else:
        target_logprob = target_logit - lse
    return LensStats(lse=lse, entropy=entropy, topk_ids=topk_ids, topk_logits=topk_logits, target_logit=target_logit,
                     target_logprob=target_logprob, target_rank=target_rank, kl_to_final=kl,
                     final_top1_rank=final_rank, prediction_depth=reference.prediction_depth(topk_ids[..., 0]))
