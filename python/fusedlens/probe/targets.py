"""Probe targets: per-token values a probe regresses on, built from the batch's own forward.

Built-in targets are statistics of the final output at the correct next token (loss =
−logprob); users add their own as tensors indexed by corpus position or functions of
the batch.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch

from .. import ops
from ..core.capture import Residuals
from ..core.models import LensModel
from ..ops.stats import LensStats

TARGETS = ("logit", "logprob", "entropy", "loss")


def final_targets(names, stats: LensStats, rows: torch.Tensor) -> list[torch.Tensor]:
    """Built-in target columns [rows, 1] from the lens statistics of a pass whose last site is the
    final layer (the lens sweep computes them anyway: no second sweep over the vocabulary)."""
    made = {"logit": stats.target_logit[-1], "logprob": stats.target_logprob[-1], "entropy": stats.entropy[-1],
            "loss": -stats.target_logprob[-1]}
    return [made[name][rows][:, None] for name in names]


class TargetMaker:
    """The target matrix [rows, m] of one batch: built-in final-output targets, then the user's."""

    def __init__(self, lm: LensModel, targets, extra: Mapping[str, torch.Tensor | Callable] | None,
                 n_tokens: int | None):
        unknown = [t for t in targets if t not in TARGETS]
        if unknown or len(set(targets)) != len(targets):
            raise ValueError(f"targets: expected distinct names from {TARGETS}, got {list(targets)}")
        self.lm, self.builtin, self.extra = lm, list(targets), dict(extra or {})
        for name, t in self.extra.items():
            if name in TARGETS:
                raise ValueError(f"extra_targets: {name!r} is a built-in target name")
            if isinstance(t, torch.Tensor) and n_tokens is not None and (t.dim() not in (1, 2) or t.shape[0] != n_tokens):
                raise ValueError(f"extra_targets[{name!r}]: expected [{n_tokens}] or [{n_tokens}, k] "
                                 f"(one row per train + held-out token), got {tuple(t.shape)}")
            if not (isinstance(t, torch.Tensor) or callable(t)):
                raise ValueError(f"extra_targets[{name!r}]: expected a tensor or a function of the batch")
        self.names: list[str] | None = None

    def __call__(self, res: Residuals, keep: torch.Tensor, stream_pos: torch.Tensor | None) -> torch.Tensor:
        """[rows, m] for the batch rows `keep` selects (bool [real tokens]); NaN where a row has no value
        (the built-in next-token targets at a sequence's last token). stream_pos: the rows' corpus
        positions, for tensor targets (None: the corpus has none)."""
        cols, dev = [], res.hidden.device
        if self.builtin:  # one sweep of the final site gives the logit, lse and entropy together
            final = ops.lens_stats(res.hidden[-1:], self.lm.norm, self.lm.unembed, res.targets.to(dev))
            cols += final_targets(self.builtin, final, keep.to(dev))
        names = list(self.builtin)
        n_rows = int(keep.sum())
        for name, t in self.extra.items():
            if isinstance(t, torch.Tensor):
                if stream_pos is None:
                    raise ValueError(f"extra_targets[{name!r}]: a tensor target needs a corpus of token ids or text; "
                                     "with a target file, give its values in the file")
                v = t[stream_pos.to(t.device)]
            else:
                v = torch.as_tensor(t(res))
                if v.shape[:1] != keep.shape:
                    raise ValueError(f"extra_targets[{name!r}]: the function gave shape {tuple(v.shape)}, expected one "
                                     f"value or row per token of the batch ({keep.shape[0]})")
                v = v[keep.to(v.device)]
            v = v.reshape(n_rows, -1).to(torch.float32)
            if not bool(torch.isfinite(v).all()):
                raise ValueError(f"extra_targets[{name!r}]: {int((~torch.isfinite(v)).sum())} NaN/Inf value(s)")
            names += [name] if v.shape[1] == 1 else [f"{name}.{i}" for i in range(v.shape[1])]
            cols.append(v)
        if self.names is None:
            self.names = names
        elif names != self.names:
            raise ValueError(f"extra_targets: the number of columns changed between batches ({self.names} -> {names})")
        if not cols:
            return torch.empty(n_rows, 0, device=dev)
        return torch.cat([c.to(dev).float() for c in cols], 1)
