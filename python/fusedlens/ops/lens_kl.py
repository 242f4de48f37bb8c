"""Fused linear-KL loss of the tuned lens: KL(p_final ‖ q_site) per row, and its gradient.

    lens_kl(xn, xn_final, unembed) -> LensKL(kl [L, T], lse [L, T], lse_final [T])

xn [L, T, d] are normalised lens residuals (the translated residual after the final
norm), xn_final [T, d] the normalised final residuals whose distribution is the
target. `kl` is differentiable with respect to xn; autograd takes it from there
through the norm and the translators. The target, the unembedding and `lse` are not
differentiated (the target is a constant of tuned-lens training).

Backends (`backend=`, as in `ops`): `cpu` (C++) and `triton` never hold a
[tokens × vocab] tensor: one sweep over vocabulary tiles, each W tile read once for
every site's rows of a token block plus the final rows. When xn requires grad the same
sweep also accumulates ∂KL/∂xn = Σ_v (q_v − p_final,v) c'_v W_v, flash-attention
style (per-row accumulators Σ exp(z − m) c' W rescaled as the running max m grows,
c' the soft-cap slope), so a training step costs two GEMMs — logits and the
gradient's — instead of three when the backward recomputes the logits. The gradient
is stored ([L, T, d], the size of xn) and the backward multiplies it by the upstream
gradient of each row. `torch` materialises the logits and runs plain autograd, in
xn's dtype (float64 gives the oracle).

compute="bf16" (the default for bf16 weights, as in `ops.lens_stats`) rounds the GEMM
operands to bf16 and, on CPUs with AVX512-BF16, multiplies them with vdpbf16ps at
twice the fp32 rate: xn, xn_final and W for the logits (so `kl` and `lse` are those of
the rounded operands, `reference.matmul_operands`, to fp32 accuracy), and (cpu and triton) also
the softmax weights exp(z − m) of the gradient's GEMM. Without bf16 dot instructions
the rounded operands go through the fp32 kernel instead (products of bf16 values are
exact in fp32: the same numbers at the fp32 speed). Each gradient entry k then
stays within 2⁻⁸ · Σ_v (q_v + p_final,v) |W_vk| of the rounded operands' exact
gradient. Sums stay fp32. Training translators tolerates that noise; evaluation
should use fp32.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core import backends
from ..core.backends import _C, pick_backend, resolve_compute
from ..core.checks import check_same_width, check_tensor
from ..core.readout import Unembed


@dataclass
class LensKL:
    kl: torch.Tensor         # [L, T] KL(p_final ‖ q_site) in nats, differentiable wrt xn
    lse: torch.Tensor        # [L, T] log-sum-exp of each site's logits
    lse_final: torch.Tensor  # [T]


def reference_lens_kl(xn: torch.Tensor, xn_final: torch.Tensor, unembed: Unembed, *,
                      compute: str = "fp32") -> LensKL:
    """Materialised logits and autograd, computed in xn's dtype (at least float32).

    compute="bf16": of the bf16-rounded operands (xn, xn_final, W), as the fused kernels
    see them; the gradient flows through the rounding as if it were the identity.
    """
    dtype = torch.float64 if xn.dtype == torch.float64 else torch.float32
    if compute == "bf16":
        def rounded(t):  # straight-through: the value of the rounded tensor, the gradient of t
            t = t.to(dtype)
            return t + (t.bfloat16().to(dtype) - t).detach()
        xn, xn_final = rounded(xn), rounded(xn_final.detach())
        unembed = Unembed(unembed.weight.detach().bfloat16().to(dtype), unembed.bias, unembed.softcap)
    logits = unembed(xn.to(dtype))
    logits_final = unembed(xn_final.detach().to(dtype))
    lse, lse_final = torch.logsumexp(logits, -1), torch.logsumexp(logits_final, -1)
    logp_final = logits_final - lse_final[:, None]
    kl = (logp_final.exp() * (logp_final - (logits - lse[..., None]))).sum(-1)
    return LensKL(kl=kl, lse=lse.detach(), lse_final=lse_final)


def _kernel(backend: str):
    if backend == "cpu":
        return _C.lens_kl
    from ..kernels.lens_kl import lens_kl as triton_lens_kl

    return triton_lens_kl


class FusedLensKL(torch.autograd.Function):
    """kl, lse, lse_final = FusedLensKL.apply(xn, xn_final, weight, bias, softcap, backend, token_block, vocab_tile,
    with_grad, bf16_kernel, round_inputs); with_grad=False skips the gradient's GEMM (then backward must not
    be called); bf16_kernel: the C++ bf16-dot sweep; round_inputs: round xn and xn_final to bf16 here (the
    gradient passes straight through), for kernels that do not round them themselves."""

    @staticmethod
    def forward(ctx, xn, xn_final, weight, bias, softcap, backend, token_block, vocab_tile, with_grad,
                bf16_kernel=False, round_inputs=False):
        with_grad = bool(with_grad and ctx.needs_input_grad[0])
        kernel = _kernel(backend)
        xn, xn_final = xn.detach().float(), xn_final.detach().float()
        if round_inputs:
            xn, xn_final = xn.bfloat16().float(), xn_final.bfloat16().float()
        args = (xn.contiguous(), xn_final.contiguous(), weight, bias, float(softcap or 0.0), with_grad)
        if backend == "cpu":
            kl, lse, lse_final, grad = kernel(*args, token_block, vocab_tile, bool(bf16_kernel))
        else:  # rounded operands: with bf16 weights, one bf16 dot per tile for the logits and the gradient
            kl, lse, lse_final, grad = kernel(*args, x_bf16=bool(round_inputs))
        ctx.mark_non_differentiable(lse, lse_final)
        ctx.save_for_backward(grad if with_grad else None)
        ctx.xn_dtype = xn.dtype
        return kl, lse, lse_final

    @staticmethod
    def backward(ctx, grad_kl, _grad_lse, _grad_lse_final):
        (grad,) = ctx.saved_tensors
        if grad is None:
            raise RuntimeError("lens_kl: the gradient was not formed (called under no_grad or with_grad=False)")
        grad_xn = (grad_kl[..., None].float() * grad).to(ctx.xn_dtype)
        return grad_xn, None, None, None, None, None, None, None, None, None, None


def lens_kl(xn: torch.Tensor, xn_final: torch.Tensor, unembed: Unembed, *, backend: str | None = None,
            compute: str = "auto", token_block: int = 8, vocab_tile: int = 512) -> LensKL:
    """KL(p_final ‖ q_site) of normalised residuals xn [L, T, d] ([T, d]: one site) against xn_final [T, d].

    compute: "fp32", "bf16" (see the module docstring) or "auto" ("bf16" for bf16 weights).
    token_block / vocab_tile tune the `cpu` backend's tiling (tokens per block, vocab ids per tile).
    """

    check_tensor("xn", xn, ndim=(2, 3), floating=True)
    if xn.dim() == 2:
        xn = xn[None]
    check_tensor("xn_final", xn_final, ndim=2, floating=True)
    check_same_width("xn", xn, unembed.d_model, "the unembedding's d_model")
    check_same_width("xn_final", xn_final, unembed.d_model, "the unembedding's d_model")
    if xn_final.shape[0] != xn.shape[1]:
        raise ValueError(f"xn_final: expected {xn.shape[1]} rows (one per token of xn), got {xn_final.shape[0]}")
    if xn_final.requires_grad:
        raise ValueError("xn_final: the target distribution is not differentiated; pass xn_final.detach()")
    if unembed.weight.requires_grad or (unembed.bias is not None and unembed.bias.requires_grad):
        raise ValueError("unembed: the unembedding is not differentiated; pass detached weight and bias")
    if xn.device != unembed.weight.device or xn_final.device != xn.device:
        raise ValueError(f"xn, xn_final, unembed: on different devices ({xn.device}, {xn_final.device}, "
                         f"{unembed.weight.device})")
    compute = resolve_compute(compute, unembed.weight)
    if token_block < 1 or vocab_tile < 16:
        raise ValueError(f"token_block, vocab_tile: expected >= 1 and >= 16, got {token_block}, {vocab_tile}")
    backend = pick_backend(xn.device, backend)
    if backend == "torch":
        return reference_lens_kl(xn, xn_final, unembed, compute=compute)
    weight, round_inputs = backends.fused_operands(unembed.weight, compute, backend, as_given=True)
    bf16_kernel = compute == "bf16" and not round_inputs
    bias = None if unembed.bias is None else unembed.bias.float()
    # needs_input_grad ignores no_grad mode, so whether to form the gradient is decided here
    with_grad = xn.requires_grad and torch.is_grad_enabled()
    kl, lse, lse_final = FusedLensKL.apply(xn, xn_final, weight.contiguous(), bias, unembed.softcap, backend,
                                           token_block, vocab_tile, with_grad, bf16_kernel, round_inputs)
    return LensKL(kl=kl, lse=lse, lse_final=lse_final)
