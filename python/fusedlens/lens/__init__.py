"""The logit lens: runs over prompts (LogitLens → LensResult) and additive per-site aggregates over corpora."""
from .aggregate import LensAggregate, per_layer_summary
from .logit_lens import LensComparison, LensResult, LogitLens

__all__ = ["LensAggregate", "LensComparison", "LensResult", "LogitLens", "per_layer_summary"]
