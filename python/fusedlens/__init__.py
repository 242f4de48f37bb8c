"""fusedlens: decode every layer's residual stream (logit lens, tuned lens) and probe it, in one pass."""
from .capture import ResidualCapture, Residuals, capture_residuals
from .lens import LensResult, LogitLens
from .models import AdapterError, LensModel, load_model
from .probe import ProbeResult, probe  # the function: `fusedlens.probe(...)`; the module stays importable by name
from .readout import FinalNorm, Unembed
from .reference import LensStats
from .ridge import RidgeAccumulator

__version__ = "0.1.0"
__all__ = ["AdapterError", "FinalNorm", "LensModel", "LensResult", "LensStats", "LogitLens", "ProbeResult",
           "ResidualCapture", "Residuals", "RidgeAccumulator", "Unembed", "capture_residuals", "load_model", "probe"]
