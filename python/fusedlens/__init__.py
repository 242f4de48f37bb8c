"""fusedlens: decode every layer's residual stream (logit lens, tuned lens) and probe it, in one pass."""
from .capture import ResidualCapture, Residuals, capture_residuals
from .lens import LensResult, LogitLens
from .models import AdapterError, LensModel, load_model
from .readout import FinalNorm, Unembed
from .reference import LensStats

__version__ = "0.1.0"
__all__ = ["AdapterError", "FinalNorm", "LensModel", "LensResult", "LensStats", "LogitLens", "ResidualCapture", "Residuals",
           "Unembed", "capture_residuals", "load_model"]
