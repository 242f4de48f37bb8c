"""The float64 truth of an HF model's lens statistics, for checking another tool's route to them.

The HF model runs in float64 (a copy) and its residuals are decoded through its own float64
readout: those logits give the reference statistics (`ops.reference`). The HF model's own
float32 route (capture, decode in float32) sets the scale of float32 error at each site: the
largest |z32 − z64| over the site's tokens and vocabulary. Another float32 route to the same
logits (TransformerLens' forward on folded weights, an nnsight trace) is held to FACTOR times
that, through the tolerance rule of tests/test_ops_lens_stats.py (1e-4 absolute or 1e-5
relative at least; ids and ranks exact except at near-ties closer than the scale).
"""
from __future__ import annotations

import copy
import os

import torch

from fusedlens import LensModel, ops
from fusedlens.core.capture import capture_residuals
from fusedlens.ops import reference
from test_ops_lens_stats import assert_close_stats

FACTOR = 8  # measured: TransformerLens routes stay within 2x the HF float32 error (refactor: see its test)
K = 5


def fresh_ids(batch: int, seq: int, vocab: int) -> torch.Tensor:
    """Random ids from a fresh seed each run (printed: pytest shows it when a test fails)."""
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"input seed {seed}")
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


def right_padded(ids: torch.Tensor, pad: int = 2) -> torch.Tensor:
    """A mask whose second row ends in `pad` padding tokens (fewer than Gemma 2's tiny window:
    HF's float64 eager attention turns a query row with nothing to attend to into NaN)."""
    mask = torch.ones_like(ids)
    mask[1, ids.shape[1] - pad:] = 0
    return mask


class Oracle:
    """Float64 HF logits of every site (embed, mid.i, resid.i) of one batch, and the float32 error scale."""

    def __init__(self, hf_model, ids: torch.Tensor, mask: torch.Tensor | None = None, *, mid: bool = True):
        with torch.no_grad():
            lm32 = LensModel.from_hf(hf_model)
            res32 = capture_residuals(lm32, ids, mask, mid=mid)
            lm64 = LensModel.from_hf(copy.deepcopy(hf_model).double())
            res64 = capture_residuals(lm64, ids, mask, mid=mid)
            self.logits = lm64.decode(res64.hidden)  # float64: a float64 residual stays float64 through decode
            self.noise = (lm32.decode(res32.hidden).double() - self.logits).abs().amax(dim=(1, 2))
        self.ids, self.mask, self.mid = ids, mask, mid
        self.sites, self.targets, self.hidden32 = res32.sites, res32.targets, res32.hidden

    def check(self, hidden: torch.Tensor, lm: LensModel, *, factor: float = FACTOR, **kwargs) -> ops.LensStats:
        """ops.lens_stats of another route's residuals with its own readout against the float64 truth."""
        return self.check_stats(ops.lens_stats(hidden, lm.norm, lm.unembed, self.targets, k=K, **kwargs), lm, factor)

    def check_stats(self, got: ops.LensStats, lm: LensModel, factor: float = FACTOR) -> ops.LensStats:
        """Statistics (top-k of K) against the float64 truth, centred over the vocabulary where
        lm.logits_centered says the unembedding is."""
        logits = self.logits - self.logits.mean(-1, keepdim=True) if lm.logits_centered else self.logits
        want = reference.stats_from_logits(logits, self.targets, K)
        scale = (factor * self.noise)[:, None, None].expand(*logits.shape[:2], 1)
        assert_close_stats(got, want, logits, self.targets, scale)
        return got
