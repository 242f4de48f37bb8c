"""Streaming linear probes of the residual stream: the ridge accumulator, the solver, the fold scheme
(targets with their own rows), lags and row selection, target files, class scores, and `fit_probes()`
that fits them all over a corpus in one pass."""
from .accumulator import Moments, RidgeAccumulator
from .classes import ClassScores
from .fit import ProbeResult, fit_probes
from .folds import Folds
from .solve import DEFAULT_ALPHAS, cross_validate, fit_weights
from .targets import TARGETS, TargetMaker
from .user_targets import TargetFile, read_target_file

__all__ = ["DEFAULT_ALPHAS", "ClassScores", "Folds", "Moments", "ProbeResult", "RidgeAccumulator", "TARGETS",
           "TargetFile", "TargetMaker", "cross_validate", "fit_probes", "fit_weights", "read_target_file"]
