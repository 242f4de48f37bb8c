"""The model's own read-out: final norm and unembedding, as plain tensors.

Everything a lens kernel needs to turn a residual into logits, detached from any
model class so that other tools can build it from their own weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .checks import check_tensor

NORM_KINDS = ("layernorm", "rmsnorm")


@dataclass
class FinalNorm:
    """LayerNorm or RMSNorm. `weight_offset=1` expresses Gemma's `x̂ · (1 + weight)`."""

    kind: str
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    eps: float
    weight_offset: float = 0.0

    def __post_init__(self):
        if self.kind not in NORM_KINDS:
            raise ValueError(f"kind: expected one of {NORM_KINDS}, got {self.kind!r}")
        if self.kind == "rmsnorm" and self.bias is not None:
            raise ValueError("bias: RMSNorm has no bias")

    @property
    def width(self) -> int | None:
        return None if self.weight is None else self.weight.shape[-1]

    def scale(self, dtype=torch.float32) -> torch.Tensor | None:
        """The effective per-channel gain (weight + offset)."""
        return None if self.weight is None else self.weight.to(dtype) + self.weight_offset

    def normalize(self, h: torch.Tensor) -> torch.Tensor:
        """x̂ without the affine part; float32 or better whatever h's dtype."""
        x = h if h.dtype == torch.float64 else h.float()
        if self.kind == "layernorm":
            x = x - x.mean(-1, keepdim=True)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        x = self.normalize(h)
        if self.weight is not None:
            x = x * self.scale(x.dtype)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype)
        return x


@dataclass
class Unembed:
    """Logits = softcap(x Wᵀ + b); weight is [vocab, d_model] (tied or not)."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None
    softcap: float | None = None

    def __post_init__(self):
        check_tensor("weight", self.weight, ndim=2, floating=True, finite=False)
        if self.bias is not None and self.bias.shape != (self.weight.shape[0],):
            raise ValueError(f"bias: expected shape ({self.weight.shape[0]},), got {tuple(self.bias.shape)}")
        if self.softcap is not None and not self.softcap > 0:
            raise ValueError(f"softcap: expected a positive number, got {self.softcap}")

    @property
    def vocab_size(self) -> int:
        return self.weight.shape[0]

    @property
    def d_model(self) -> int:
        return self.weight.shape[1]

    def cap(self, z: torch.Tensor) -> torch.Tensor:
        return z if self.softcap is None else self.softcap * torch.tanh(z / self.softcap)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        z = x @ self.weight.to(x.dtype).T
        if self.bias is not None:
            z = z + self.bias.to(x.dtype)
        return self.cap(z)
