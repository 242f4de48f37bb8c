"""Steering (activation addition): add c · v to a residual site while the model runs, with v from a
`fusedlens directions` file, a tensor file or ActAdd prompts (vectors); generation with and without it
side by side (generate); the layer × coefficient scan of held-out perplexity, read-site projection and
samples (scan). Built on intervene's write edits."""
from .generate import SteerGeneration, generate
from .scan import ScanResult, eval_ids, scan
from .vectors import (KINDS, actadd_vector, actadd_vectors, check_vector, load_directions, load_tensor, steer_edit,
                      unit)

__all__ = ["KINDS", "ScanResult", "SteerGeneration", "actadd_vector", "actadd_vectors", "check_vector", "eval_ids",
           "generate", "load_directions", "load_tensor", "scan", "steer_edit", "unit"]
