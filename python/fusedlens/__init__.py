"""fusedlens: decode every layer's residual stream (logit lens, tuned lens), probe it, attribute, patch
and steer the model, in one compiled pass.

The tree (docs/design.md): `core` (the model, its parts, capture, checks, files), `data` (corpora,
token windows, prompts), `ops` (tensor-level ops and their float64 reference), `report` (tables,
pictures), the analyses (`lens`, `tuned`, `probe`, `refine`, `dla`, `directions`, `concepts`,
`intervene`, `steer`), `adapters` (TransformerLens, nnsight), `job` (the corpus job behind
`fusedlens run`) and `cli` (commands); kernels live in `fusedlens.kernels` (Triton) and
`fusedlens._C` (C++).
"""
from .concepts import ConceptsResult, concept_geometry
from .core.capture import ResidualCapture, Residuals, capture_residuals
from .core.models import AdapterError, LensModel, load_model
from .core.readout import FinalNorm, Unembed
from .dla import DLAResult, direct_logit_attribution
from .lens import LensResult, LogitLens
from .ops.stats import LensStats
from .probe import ProbeResult, RidgeAccumulator, fit_probes

__version__ = "0.2.0"
__all__ = ["AdapterError", "ConceptsResult", "DLAResult", "FinalNorm", "LensModel", "LensResult", "LensStats", "LogitLens",
           "ProbeResult", "ResidualCapture", "Residuals", "RidgeAccumulator", "Unembed", "capture_residuals",
           "concept_geometry", "direct_logit_attribution", "fit_probes", "load_model"]
