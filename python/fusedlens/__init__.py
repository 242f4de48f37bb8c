"""fusedlens: decode every layer's residual stream (logit lens, tuned lens) and probe it, in one pass.

The tree: `core` (checks, backends, model adapter, capture), `data` (corpora, token windows),
`ops` (tensor-level ops and the float64 reference), `lens`, `tuned`, `probe`, `refine`, `dla` (the analyses),
`report` (tables, pictures), `adapters` (TransformerLens models, nnsight traces), `run` (the corpus
job), `cli` (commands); kernels live in `fusedlens.kernels` (Triton) and `fusedlens._C` (C++).
See docs/design.md.
"""
import importlib as _importlib
import sys as _sys

from .concepts import ConceptsResult, concepts  # the function: `fusedlens.concepts(lm, lists=...)`
from .core.capture import ResidualCapture, Residuals, capture_residuals
from .core.models import AdapterError, LensModel, load_model
from .core.readout import FinalNorm, Unembed
from .dla import DLAResult, dla  # the function: `fusedlens.dla(...)`; the package stays importable by name
from .lens import LensResult, LogitLens
from .ops.stats import LensStats
from .probe import ProbeResult, probe  # the function: `fusedlens.probe(...)`; the package stays importable by name
from .probe.accumulator import RidgeAccumulator

# Module names of the flat 0.1 layout, kept importable for one release (README showed them).
_OLD_MODULES = {"capture": "core.capture", "models": "core.models", "readout": "core.readout",
                "reference": "ops.reference", "lens_kl": "ops.lens_kl", "ridge": "probe.accumulator",
                "ridge_solve": "probe.solve", "records": "run.records", "corpus": "data.corpus"}
for _old, _new in _OLD_MODULES.items():
    _sys.modules[f"{__name__}.{_old}"] = globals()[_old] = _importlib.import_module(f".{_new}", __name__)

__version__ = "0.1.0"
__all__ = ["AdapterError", "ConceptsResult", "DLAResult", "FinalNorm", "LensModel", "LensResult", "LensStats", "LogitLens",
           "ProbeResult", "ResidualCapture", "Residuals", "RidgeAccumulator", "Unembed", "capture_residuals", "concepts",
           "dla", "load_model", "probe"]
