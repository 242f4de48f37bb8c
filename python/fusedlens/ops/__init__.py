"""Tensor-level ops, the API other tools call: one module per op (checks, dispatch to the C++ / Triton
kernel or the float64 `reference`, autograd where it has one) and the stats types they return."""
from ..core.backends import (BACKENDS, COMPUTE_MODES, available_backends, bf16_dot_on_cpu, pick_backend,
                             resolve_compute)
from . import reference
from .lens_kl import LensKL, lens_kl, reference_lens_kl
from .lens_stats import MAX_TOPK, lens_stats, normalized_rows
from .logit_extremes import LogitExtremes, logit_extremes
from .ridge_gram import reference_gram, ridge_gram
from .stats import LensStats, prediction_depth
from .target_logit import target_logit

__all__ = ["BACKENDS", "COMPUTE_MODES", "LensKL", "LensStats", "LogitExtremes", "MAX_TOPK", "available_backends",
           "bf16_dot_on_cpu", "lens_kl", "lens_stats", "logit_extremes", "normalized_rows", "pick_backend",
           "prediction_depth", "reference", "reference_gram", "reference_lens_kl", "resolve_compute", "ridge_gram",
           "target_logit"]
