"""Streaming linear probes of the residual stream: the ridge accumulator, the solver, the fold scheme,
targets, and `probe()` that fits them all over a corpus in one pass."""
from .accumulator import Moments, RidgeAccumulator
from .fit import ProbeResult, probe
from .folds import Folds
from .solve import DEFAULT_ALPHAS, cross_validate, fit_weights
from .targets import TARGETS, TargetMaker

__all__ = ["DEFAULT_ALPHAS", "Folds", "Moments", "ProbeResult", "RidgeAccumulator", "TARGETS", "TargetMaker",
           "cross_validate", "fit_weights", "probe"]
