"""What the lens ops return: LensStats, one tensor per statistic, and the prediction depth rule."""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class LensStats:
    """Per row [sites, tokens] unless noted; `topk_*` add a trailing k."""

    lse: torch.Tensor
    entropy: torch.Tensor
    topk_ids: torch.Tensor
    topk_logits: torch.Tensor
    target_logit: torch.Tensor | None
    target_logprob: torch.Tensor | None
    target_rank: torch.Tensor | None
    kl_to_final: torch.Tensor
    final_top1_rank: torch.Tensor
    prediction_depth: torch.Tensor  # [tokens]
    set_mass: torch.Tensor | None = None  # [sites, tokens, sets]: Σ p(v) over each token set (token_sets=)

    @property
    def top1(self) -> torch.Tensor:
        return self.topk_ids[..., 0]

    def items(self):
        return ((f.name, getattr(self, f.name)) for f in fields(self))

    @classmethod
    def cat(cls, parts: list["LensStats"], dim_tokens: bool = True) -> "LensStats":
        """Join stats of consecutive token chunks."""
        out = {}
        for name, first in parts[0].items():
            if first is None:
                out[name] = None
            else:
                out[name] = torch.cat([getattr(p, name) for p in parts], dim=0 if name == "prediction_depth" else 1)
        return cls(**out)

    def select(self, rows) -> "LensStats":
        """The stats of some tokens (an index tensor or a boolean mask over tokens)."""
        return LensStats(**{name: None if t is None else t[rows] if name == "prediction_depth" else t[:, rows]
                            for name, t in self.items()})

    def to(self, device) -> "LensStats":
        return LensStats(**{name: None if t is None else t.to(device) for name, t in self.items()})


def prediction_depth(top1: torch.Tensor) -> torch.Tensor:
    """[sites, tokens] top-1 ids → first site from which top-1 stays equal to the final one."""
    agree = (top1 == top1[-1:]).to(torch.int64)
    stays = agree.flip(0).cumprod(0).flip(0)  # 1 where this and every later site agree
    return top1.shape[0] - stays.sum(0)
